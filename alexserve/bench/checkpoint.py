"""Checkpoint benchmark: how long a preemption checkpoint takes, to size a scheduler's grace period.

    python -m alexserve.bench.checkpoint                      # the paper's net (width 1.0), a temporary folder
    python -m alexserve.bench.checkpoint --dir /shared/runs --width 1.0 --repeats 3

Writes both towers' shards (weights and SGD momentum, as training saves them) through the checkpoint store
into a folder under --dir, commits, and prints per repeat the seconds and MB/s for the shards, written one
after the other (in a run each rank writes its own shard at the same time) and for the commit. Point --dir
at the filesystem your run folders live on: that is what the grace period depends on.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from alexserve.checkpoint.run_checkpointer import SHARD_NAMES
from alexserve.checkpoint.store import CheckpointStore
from alexserve.config import JobConfig, ModelConfig
from alexserve.model import AlexNetTower


def training_payload(tower: AlexNetTower) -> dict:
    """What a rank saves of its tower: the weights and a momentum buffer per parameter."""
    momentum = {i: {"momentum_buffer": torch.zeros_like(p)} for i, p in enumerate(tower.parameters())}
    return {"model": tower.state_dict(), "optimizer": {"state": momentum, "param_groups": []}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alexserve.bench.checkpoint", description=__doc__)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: the system's temp folder)")
    parser.add_argument("--width", type=float, default=1.0, help="model.width (1.0: the paper's net)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    model = ModelConfig(width=args.width)
    towers = [AlexNetTower(model, tower) for tower in (0, 1)]
    payloads = [training_payload(t) for t in towers]
    per_tower = sum(p.numel() for p in towers[0].parameters())
    print(f"width {args.width}: {per_tower:,} parameters per tower")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="alexserve-bench-checkpoint-") as folder:
        store = CheckpointStore(Path(folder), keep_last=1, shard_names=SHARD_NAMES)
        for step in range(1, args.repeats + 1):
            started = time.perf_counter()
            paths = [store.write_shard(step, name, payload) for name, payload in zip(SHARD_NAMES, payloads)]
            written = time.perf_counter()
            megabytes = sum(path.stat().st_size for path in paths) / 1e6
            store.commit(step, {"num_pairs": 1}, JobConfig(model=model).model_dump(mode="json"))
            committed = time.perf_counter()
            shards = written - started
            print(
                f"repeat {step}: both shards {megabytes:.0f} MB in {shards:.2f}s ({megabytes / shards:.0f} MB/s), "
                f"commit {committed - written:.3f}s"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
