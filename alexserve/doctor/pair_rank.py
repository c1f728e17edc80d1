"""What each of the doctor's two tower processes runs (`python -m alexserve.doctor.pair_rank`, RANK etc. set).

In order, stopping at the first failure (the peer would wait for a part that never comes):

1. send/recv: tower 0 sends a known tensor, tower 1 answers with its own; each checks what it got,
   then a few round trips of a larger one give the bandwidth (NCCL between two GPUs, or gloo on CPU);
2. the two-tower step: forward and backward of a small net through the real `PeerExchange`; the
   logits, loss and gradients go to `OUT/rank{R}.pt` for the parent to compare with the grouped model;
3. throughput: `--steps` timed training steps of the two-tower net (after two warm-up steps), under
   training's math policy (TF32 as `train.allow_tf32` defaults, restored after step 2's IEEE parity check),
   timed with CUDA events on a GPU (doctor/timing.py).

Each rank writes what it found to `OUT/rank{R}.json`, an error included.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from alexserve.config import ModelConfig
from alexserve.doctor.timing import time_training_steps
from alexserve.model import AlexNetTower
from alexserve.parallel.exchange import PeerExchange
from alexserve.parallel.process_group import process_group
from alexserve.parallel.topology import Topology
from alexserve.train.optimizer import PaperSGD
from alexserve.train.precision import ieee_fp32
from alexserve.train.step import tower_forward_logits, tower_train_step

PARITY_SEED = 3


def parity_model_config() -> ModelConfig:
    """A small net that still has every part: odd class count (uneven fc8 split), biases of 1, input scaling."""
    return ModelConfig(
        num_classes=7,
        width=0.125,
        input_size=67,
        conv1_padding=2,
        init_scheme="paper",
        init_weight_std=0.05,
        init_bias_one_layers=("conv2", "conv4", "conv5", "fc6", "fc7"),
        input_scaling="unit",
        pixel_std=2.0,
    )


def parity_batch(batch: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 images and labels, the same in every process (the parent's reference included)."""
    cfg = parity_model_config()
    g = torch.Generator().manual_seed(99)
    images = torch.randn(batch, 3, cfg.input_size, cfg.input_size, generator=g, dtype=torch.float64)
    return images, torch.randint(0, cfg.num_classes, (batch,), generator=g)


def throughput_setup(device: torch.device) -> tuple[ModelConfig, int]:
    """Paper size and batch on a GPU; a quarter-width net on 64 pixels on CPU (so the check takes seconds)."""
    if device.type == "cuda":
        return ModelConfig(width=1.0, input_size=224, num_classes=1000, pixel_std=60.0), 128
    return ModelConfig(width=0.25, input_size=64, num_classes=10, pixel_std=60.0), 32


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def send_recv(topology: Topology) -> dict:
    device, peer = topology.device, topology.peer
    numel = (16 << 20) if device.type == "cuda" else (2 << 20)  # 64 MB / 8 MB of float32
    mine = torch.arange(numel, dtype=torch.float32, device=device) + 1000 * topology.rank
    got = torch.empty_like(mine)

    def round_trip() -> None:
        if topology.tower == 0:
            dist.send(mine, peer)
            dist.recv(got, peer)
        else:
            dist.recv(got, peer)
            dist.send(mine, peer)

    round_trip()
    expected = torch.arange(numel, dtype=torch.float32, device=device) + 1000 * peer
    if not torch.equal(got, expected):
        wrong = int((got != expected).sum())
        raise RuntimeError(f"rank {topology.rank} received {wrong} wrong values of {numel} from rank {peer}")
    repeats = 5
    _sync(device)
    began = time.perf_counter()
    for _ in range(repeats):
        round_trip()
    _sync(device)
    seconds = time.perf_counter() - began
    nbytes = mine.numel() * mine.element_size()
    return {"bytes": nbytes, "gigabytes_per_second": 2 * repeats * nbytes / seconds / 1e9}


def two_tower_step(topology: Topology, out: Path) -> dict:
    """Forward and backward of the parity net through the real exchange; tensors saved for the parent."""
    device = topology.device
    dtype = torch.float32 if device.type == "cuda" else torch.float64
    # TF32 would make the comparison about TF32's rounding, not about the exchange; the policy is restored after.
    with ieee_fp32(device):
        return _two_tower_step(topology, out, dtype)


def _two_tower_step(topology: Topology, out: Path, dtype: torch.dtype) -> dict:
    device = topology.device
    tower = AlexNetTower(parity_model_config(), topology.tower)
    tower.reset_parameters(PARITY_SEED)
    tower = tower.to(device, dtype)
    exchange = PeerExchange(topology.rank, topology.peer, topology.tower)
    images, labels = parity_batch()
    logits = tower_forward_logits(tower, exchange, images.to(device, dtype), None)
    loss = F.cross_entropy(logits, labels.to(device))
    loss.backward()
    grads = {name: p.grad.detach().cpu() for name, p in tower.named_parameters()}
    torch.save(
        {"logits": logits.detach().cpu(), "loss": loss.detach().cpu(), "grads": grads}, out / f"rank{topology.rank}.pt"
    )
    return {"dtype": str(dtype).removeprefix("torch.")}


def throughput(topology: Topology, steps: int) -> dict:
    device = topology.device
    cfg, batch = throughput_setup(device)
    tower = AlexNetTower(cfg, topology.tower)
    tower.reset_parameters(0)
    tower = tower.to(device)
    optimizer = PaperSGD(tower.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    exchange = PeerExchange(topology.rank, topology.peer, topology.tower)
    g = torch.Generator().manual_seed(0)
    images = (torch.randn(batch, 3, cfg.input_size, cfg.input_size, generator=g) * 60.0).to(device)
    labels = torch.randint(0, cfg.num_classes, (batch,), generator=g).to(device)

    def step() -> None:
        tower_train_step(tower, exchange, optimizer, images, labels, None)  # training's step: reads nothing back

    seconds = time_training_steps(step, steps, device)
    return {
        "images_per_second": steps * batch / seconds,
        "steps": steps,
        "batch_size": batch,
        "width": cfg.width,
        "input_size": cfg.input_size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alexserve.doctor.pair_rank", description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", choices=["cpu", "cuda"], required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=60.0, help="process-group timeout, seconds")
    args = parser.parse_args(argv)
    rank = int(os.environ["RANK"])
    device = torch.device("cuda", rank) if args.device == "cuda" else torch.device("cpu")
    topology = Topology(
        rank=rank, world_size=2, local_rank=rank, device=device, backend="nccl" if args.device == "cuda" else "gloo"
    )
    report: dict = {}
    part = "process group"
    try:
        with process_group(topology, timeout_seconds=args.timeout):
            part = "send_recv"
            report[part] = send_recv(topology)
            part = "two_tower_step"
            report[part] = two_tower_step(topology, args.out)
            part = "throughput"
            report[part] = throughput(topology, args.steps)
            dist.barrier()
    except Exception as err:  # noqa: BLE001 - reported to the parent, which prints it in the table
        traceback.print_exc()
        report["error"] = {"part": part, "message": str(err).splitlines()[0] if str(err) else type(err).__name__}
    (args.out / f"rank{rank}.json").write_text(json.dumps(report))
    return 1 if "error" in report else 0


if __name__ == "__main__":
    sys.exit(main())
