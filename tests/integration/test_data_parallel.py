"""Two pairs (4 gloo processes) equal one pair on the concatenated batch; checkpoints cross layouts."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist

from alexserve.checkpoint.run_checkpointer import SHARD_NAMES
from alexserve.checkpoint.store import CheckpointStore
from alexserve.data.source import EvalSource, eval_shard_indices
from alexserve.parallel.data_parallel import exchange_group, pair_mesh_if_several, replicate_across_pairs
from alexserve.parallel.topology import Topology
from alexserve.train.evaluation import evaluate, sum_over_pairs
from alexserve.train.optimizer import PaperSGD
from alexserve.train.step import tower_forward_logits, tower_train_step
from helpers.parity import assert_matches_reference, make_batch, parity_tower
from helpers.processes import GROUP_TIMEOUT_SECONDS, rank_main, run_ranks, start_ranks, wait_all
from helpers.worker_jobs import CHECKPOINTED_JOB


def rank_data_parallel_step(topology: Topology, out: Path) -> None:
    """One SGD step; pair p trains on its slice of the parity batch; every rank saves its tower's weights.

    The groups are built as the worker builds them: the mesh (several pairs only), the exchange on its tower group,
    DDP on its dp group. Each rank records the exchange group's global ranks (None: the default group).
    """
    tower, exchange = parity_tower(topology)
    mesh = pair_mesh_if_several(topology, GROUP_TIMEOUT_SECONDS)
    exchange.group = exchange_group(mesh)
    model = replicate_across_pairs(tower, topology, GROUP_TIMEOUT_SECONDS, mesh)  # DDP over the pairs, or the tower
    optimizer = PaperSGD(tower.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images, labels = make_batch(8)
    per_pair = len(labels) // topology.num_pairs
    mine = slice(topology.pair * per_pair, (topology.pair + 1) * per_pair)
    tower_train_step(model, exchange, optimizer, images[mine], labels[mine], None)
    torch.save({"weights": tower.state_dict()}, out / f"rank{topology.rank}.pt")
    group = exchange.group
    ranks = None if group is None else sorted(dist.get_process_group_ranks(group))
    (out / f"group{topology.rank}.json").write_text(json.dumps({"ranks": ranks, "size": dist.get_world_size(group)}))


def test_two_pairs_step_equals_one_pair_on_the_concatenated_batch(tmp_path):
    run_ranks(rank_data_parallel_step, tmp_path / "one", world_size=2)
    run_ranks(rank_data_parallel_step, tmp_path / "two", world_size=4, timeout=180)
    # Issue 24, item 8: with two pairs each exchange runs on its pair's two-rank group, not beside DDP's all-reduce
    # on the world's communicator; with one pair on the default group, which is the pair.
    for rank in range(4):
        group = json.loads((tmp_path / "two" / f"group{rank}.json").read_text())
        assert group == {"ranks": sorted([rank, rank ^ 1]), "size": 2}, f"rank {rank}'s exchange group: {group}"
    for rank in range(2):
        assert json.loads((tmp_path / "one" / f"group{rank}.json").read_text()) == {"ranks": None, "size": 2}
    for rank in (0, 1):
        one = torch.load(tmp_path / "one" / f"rank{rank}.pt", weights_only=True)["weights"]
        for source in (rank, rank + 2):  # both pairs hold the same tower weights afterwards
            two = torch.load(tmp_path / "two" / f"rank{source}.pt", weights_only=True)["weights"]
            for name, value in one.items():
                assert_matches_reference(two[name], value, f"tower {rank} {name} (rank {source} of the 2-pair run)")


class FixedEvalSource(EvalSource):
    """The parity batch of 10 images in batches of 3 (the last one short): 4 batches, of which this pair's shard."""

    def __init__(self, shard: int, num_shards: int) -> None:
        images, labels = make_batch(10)
        keep = torch.tensor(eval_shard_indices(len(labels), 3, shard, num_shards))
        self.images, self.labels = images[keep], labels[keep]
        self.num_images = len(self.labels)

    def batches(self, mode):
        for start in range(0, self.num_images, 3):
            yield self.images[start : start + 3], self.labels[start : start + 3]


def rank_sharded_evaluation(topology: Topology, out: Path) -> None:
    """Centre-crop evaluation of the parity towers, each pair on its shard, the counts summed over the pairs."""
    tower, exchange = parity_tower(topology)
    tower.eval()
    result = evaluate(
        lambda images: tower_forward_logits(tower, exchange, images, None),
        FixedEvalSource(topology.pair, topology.num_pairs),
        "center",
        sum_counts=lambda counts: sum_over_pairs(counts, topology),
        device=topology.device,
    )
    batches = {k: v.count for (k, _), v in exchange.stats.take().items() if k == "conv3"}
    (out / f"rank{topology.rank}.json").write_text(
        json.dumps({"top1": result.top1_error, "top5": result.top5_error, "images": result.images, **batches})
    )


def test_two_pairs_evaluate_their_own_shards_and_count_every_image_once(tmp_path):
    run_ranks(rank_sharded_evaluation, tmp_path / "one", world_size=2)
    run_ranks(rank_sharded_evaluation, tmp_path / "two", world_size=4, timeout=180)
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    assert one["images"] == 10 and one["conv3"] == 4, one
    for rank in range(4):
        two = json.loads((tmp_path / "two" / f"rank{rank}.json").read_text())
        assert (two["top1"], two["top5"], two["images"]) == (one["top1"], one["top5"], 10), (rank, two, one)
        assert two["conv3"] == 2, f"rank {rank} evaluated {two['conv3']} of the 4 batches, not its 2"
    assert 0 < one["top5"] < 1, "every image right or every image wrong: the sum would prove little"


def run_worker(world_size: int, run_dir: Path, *extra: str) -> list[tuple[int, str, str]]:
    procs = start_ranks(
        ["-m", "alexserve.worker", *CHECKPOINTED_JOB, "--set", f"train.run_dir={run_dir}", *extra], world_size
    )
    results = wait_all(procs, timeout=240)
    for rank, (code, _, err) in enumerate(results):
        assert code == 0, f"rank {rank}: {err[-2000:]}"
    return results


def test_checkpoints_move_between_one_and_two_pairs(tmp_path):
    # 4 processes stop at the end of epoch 1 (4 steps of 2x32 images); 2 processes finish from there.
    four_to_two = tmp_path / "four_to_two"
    run_worker(4, four_to_two, "--set", "train.max_steps=4", "--set", "train.num_epochs=2")
    store = CheckpointStore(four_to_two / "checkpoints", keep_last=3, shard_names=SHARD_NAMES)
    assert store.latest().step == 4 and {p.name for p in store.latest().path.iterdir()} >= {"tower0.pt", "tower1.pt"}
    results = run_worker(2, four_to_two, "--resume", "--set", "train.num_epochs=2")
    assert "resumed from the checkpoint at step 4" in results[0][2]
    assert store.latest().step == 4 + 8  # one more epoch of 8 single-pair steps
    # And back: the 2-process checkpoint resumes in 4 processes.
    results = run_worker(4, four_to_two, "--resume", "--set", "train.num_epochs=3")
    assert "resumed from the checkpoint at step 12" in results[0][2]
    assert store.latest().step == 12 + 4


if __name__ == "__main__":
    rank_main()
