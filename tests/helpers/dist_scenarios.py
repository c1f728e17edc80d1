"""Scenarios run by real rank processes (see conftest.run_scenario); results go to OUT/rank{r}.pt.

    python tests/helpers/dist_scenarios.py SCENARIO OUT   (with RANK, WORLD_SIZE, MASTER_* set)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from alexserve.config import DistConfig
from alexserve.model import AlexNetTower
from alexserve.parallel.exchange import PeerExchange
from alexserve.parallel.process_group import process_group
from alexserve.parallel.topology import topology_from_env
from alexserve.train.optimizer import PaperSGD
from alexserve.train.step import tower_forward_logits, tower_train_step
from helpers.parity import DROPOUT_SEED, SEED, make_batch, parity_model_config


def build(topology, dtype=torch.float64) -> tuple[AlexNetTower, PeerExchange]:
    tower = AlexNetTower(parity_model_config(), topology.tower)
    tower.reset_parameters(SEED)
    return tower.to(dtype), PeerExchange(topology.rank, topology.peer, topology.tower)


def gradients(topology, out: Path, dropout_seed: int | None) -> None:
    tower, link = build(topology)
    images, labels = make_batch()
    logits = tower_forward_logits(tower, link, images, dropout_seed)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    torch.save(
        {"logits": logits.detach(), "loss": loss.detach(), "grads": {n: p.grad for n, p in tower.named_parameters()},
         "stats": {f"{p}/{d}": (e.seconds, e.bytes) for (p, d), e in link.stats.take().items()}},
        out / f"rank{topology.rank}.pt",
    )


def sgd_steps(topology, out: Path) -> None:
    tower, link = build(topology)
    optimizer = PaperSGD(tower.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images, labels = make_batch()
    losses = [tower_train_step(tower, link, optimizer, images, labels, DROPOUT_SEED + step).loss for step in range(2)]
    torch.save({"weights": tower.state_dict(), "losses": losses}, out / f"rank{topology.rank}.pt")


SCENARIOS = {
    "gradients": lambda topo, out: gradients(topo, out, None),
    "gradients_dropout": lambda topo, out: gradients(topo, out, DROPOUT_SEED),
    "sgd_steps": sgd_steps,
}


def main() -> None:
    name, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    topology = topology_from_env(DistConfig(backend="gloo", device="cpu"))
    with process_group(topology, timeout_seconds=30):
        SCENARIOS[name](topology, out)



def checkpoint_logits(topology, out: Path) -> None:
    """Loads this tower's shard of the checkpoint at $CKPT and saves the towers' logits on the parity batch."""
    import os

    from alexserve.config import JobConfig
    from alexserve.train.export import find_checkpoint

    store, ref = find_checkpoint(Path(os.environ["CKPT"]))
    job = JobConfig.model_validate(store.load_config(ref))
    tower = AlexNetTower(job.model, topology.tower)
    tower.load_state_dict(store.load(ref, f"tower{topology.tower}")["model"])
    tower.eval()
    link = PeerExchange(topology.rank, topology.peer, topology.tower)
    g = torch.Generator().manual_seed(5)
    images = torch.randn(4, 3, job.model.input_size, job.model.input_size, generator=g) * 50
    with torch.no_grad():
        logits = tower_forward_logits(tower, link, images, None)
    torch.save({"images": images, "logits": logits}, out / f"rank{topology.rank}.pt")


SCENARIOS["checkpoint_logits"] = checkpoint_logits



def data_parallel_step(topology, out: Path) -> None:
    """One SGD step; pair p trains on its slice of the parity batch; pair 0's towers save their weights."""
    from alexserve.parallel.data_parallel import GradientAverager, tower_groups

    group = tower_groups(topology)
    tower, link = build(topology)
    averager = GradientAverager(tower, group, topology.num_pairs) if group is not None else None
    optimizer = PaperSGD(tower.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images, labels = make_batch(8)
    per_pair = len(labels) // topology.num_pairs
    mine = slice(topology.pair * per_pair, (topology.pair + 1) * per_pair)
    tower_train_step(tower, link, optimizer, images[mine], labels[mine], None, averager)
    torch.save({"weights": tower.state_dict()}, out / f"rank{topology.rank}.pt")


SCENARIOS["data_parallel_step"] = data_parallel_step


def barrier_after_peer_exit(topology, out: Path) -> None:
    """Rank 1 leaves; rank 0's checkpoint barrier must fail with a PeerLostError naming what it was doing."""
    import os

    from alexserve.config import JobConfig
    from alexserve.parallel.exchange import PeerLostError
    from alexserve.checkpoint.run_checkpointer import Position, RunCheckpointer, open_store
    from alexserve.train.schedule import PlateauSchedule

    tower, _ = build(topology)
    if topology.rank == 1:
        os._exit(0)
    job = JobConfig.model_validate({"model": parity_model_config().model_dump(mode="json"), "train": {"run_dir": str(out)}})
    optimizer = PaperSGD(tower.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    try:
        RunCheckpointer(job, topology, open_store(job)).save(tower, optimizer, PlateauSchedule(job.optim), Position(0, 1, 1))
        message = "no error"
    except PeerLostError as err:
        message = str(err)
    (out / "rank0.txt").write_text(message)
    os._exit(0)  # the group is broken: skip the polite teardown


SCENARIOS["barrier_after_peer_exit"] = barrier_after_peer_exit


if __name__ == "__main__":
    main()
