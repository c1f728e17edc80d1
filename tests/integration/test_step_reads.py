"""The training step reads nothing back from the device: a whole epoch of the real loop (two gloo rank processes)
with every read-back of a tensor counted.

A read-back (`item`, `tolist`, `float()`, `int()`, `bool()`, `numpy`, `cpu`) on a GPU makes the host wait for
the device. The loop may read only in its reading places: the interval meter's `read()` (progress lines and
reports), the divergence monitor's `verdict()`, a checkpoint, an evaluation, the end of an epoch. The test runs
the trainer as a GPU job runs it (the divergence guard read at the progress lines, not after every step) and
records every read made anywhere else, outside the data loader (which on a GPU reads host-side tensors only).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from alexserve.checkpoint.run_checkpointer import RunCheckpointer, open_store
from alexserve.config import load_config
from alexserve.data.factory import build_eval_source, build_train_source
from alexserve.model import AlexNetTower
from alexserve.parallel.exchange import PeerExchange
from alexserve.parallel.topology import Topology
from alexserve.train import loop
from alexserve.train.divergence import DivergenceMonitor
from alexserve.train.optimizer import PaperSGD
from alexserve.train.progress import IntervalMeter
from alexserve.train.recipe import resolve_job
from alexserve.train.schedule import PlateauSchedule
from helpers.processes import rank_main, run_ranks

READ_BACKS = ("item", "tolist", "__float__", "__int__", "__bool__", "numpy", "cpu")
# 256 images in batches of 32: 8 steps, a progress line every 4.
JOB = {
    "data.source": "generated",
    "data.generated_train_images": 256,
    "data.generated_val_images": 64,
    "model.width": 0.125,
    "model.input_size": 64,
    "train.batch_size": 32,
    "train.num_epochs": 1,
    "train.log_every_steps": 4,
}


def rank_one_epoch_counting_reads(topology: Topology, out: Path) -> None:
    overrides = [f"{key}={value}" for key, value in {**JOB, "train.run_dir": str(out / "run")}.items()]
    job = resolve_job(load_config(None, overrides)).job
    tower = AlexNetTower(job.model, topology.tower)
    tower.reset_parameters(job.train.seed)
    exchange = PeerExchange(topology.rank, topology.peer, topology.tower)
    optimizer = PaperSGD.from_config(tower.parameters(), job.optim)
    learner = loop.Learner(tower, exchange, optimizer, PlateauSchedule(job.optim))
    io = loop.TrainerIO(
        build_train_source(job, dp_rank=topology.pair, dp_size=topology.num_pairs, device=topology.device),
        build_eval_source(job, device=topology.device),
        RunCheckpointer(job, topology, open_store(job)),
    )
    trainer = loop.TowerTrainer(job, topology, learner, io, check_divergence_every_step=False)

    reading = [0]  # > 0 inside a place where the loop may read
    stray: list[str] = []
    meter_reads = [0]
    allowed_reads = [0]  # read-backs in the reading places: shows the counting is in force

    def may_read(function, count=None):
        def wrapper(*args, **kwargs):
            reading[0] += 1
            if count is not None and args[0]._reading is None:  # a meter's repeated read() reuses its first
                count[0] += 1
            try:
                return function(*args, **kwargs)
            finally:
                reading[0] -= 1

        return wrapper

    def watched(name, original):
        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1)
            allowed_reads[0] += bool(reading[0])
            if not reading[0] and "alexserve/data/" not in caller.f_code.co_filename:
                where = f"{caller.f_code.co_filename}:{caller.f_lineno}"
                stray.append(f"{name} at global step {trainer.position.global_step} from {where}")
            return original(self, *args, **kwargs)

        return wrapper

    patches = [
        (IntervalMeter, "read", may_read(IntervalMeter.read, meter_reads)),
        (DivergenceMonitor, "verdict", may_read(DivergenceMonitor.verdict)),
        (loop.TowerTrainer, "checkpoint", may_read(loop.TowerTrainer.checkpoint)),
        (loop.TowerTrainer, "evaluate", may_read(loop.TowerTrainer.evaluate)),
        (loop.TowerTrainer, "finish_epoch", may_read(loop.TowerTrainer.finish_epoch)),
        *[(torch.Tensor, name, watched(name, getattr(torch.Tensor, name))) for name in READ_BACKS],
    ]
    originals = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in patches]
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)
    try:
        outcome = trainer.train()
    finally:
        for owner, name, original in originals:
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        io.train_source.close()
        io.eval_source.close()
    result = {
        "stray": stray,
        "meter_reads": meter_reads[0],
        "allowed_reads": allowed_reads[0],
        "steps": outcome.position.global_step,
    }
    (out / f"rank{topology.rank}.json").write_text(json.dumps(result))


def test_the_step_path_reads_nothing_back(tmp_path):
    run_ranks(rank_one_epoch_counting_reads, tmp_path, timeout=240)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["steps"] == 8, result
        assert result["stray"] == [], f"rank {rank} read tensors back outside the reading places: {result['stray']}"
        # Two progress lines (steps 4 and 8) and the epoch's totals for the history: three reads in 8 steps.
        assert result["meter_reads"] == 3, result
        assert result["allowed_reads"] >= 3, result


if __name__ == "__main__":
    rank_main()
