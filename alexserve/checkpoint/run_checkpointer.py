"""Saving and restoring a whole training run, across all ranks, through `CheckpointStore`.

Tower t's shard (weights, optimizer state, RNG states) is written by the rank
running tower t of pair 0: data-parallel pairs hold identical copies, so one per
tower suffices and a checkpoint loads into any number of pairs. Rank 0 commits
after a barrier, so the commit marker exists only once every shard is whole.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from alexserve.checkpoint.store import (
    CheckpointError,
    CheckpointRef,
    CheckpointStore,
    capture_rng_state,
    restore_rng_state,
)
from alexserve.config import JobConfig
from alexserve.parallel.exchange import peers_required
from alexserve.parallel.topology import Topology
from alexserve.train.schedule import PlateauSchedule

SHARD_NAMES = ("tower0", "tower1")
# Model fields that change parameter shapes or meaning; anything else (width of a log line...) may differ on resume.
MODEL_FIELDS_THAT_MUST_MATCH = (
    "num_classes",
    "width",
    "input_size",
    "conv1_padding",
    "tower_conv_channels",
    "conv_kernel_sizes",
    "conv1_stride",
    "tower_fc_neurons",
    "pool_kernel",
    "pool_stride",
    # Same shapes, another function: LRN strength and what the input is divided by.
    "lrn_alpha_convention",
    "input_scaling",
)


@dataclass
class Position:
    """Where training stands: the next step to run is `step_in_epoch` of `epoch`."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


def shard_name(tower: int) -> str:
    return SHARD_NAMES[tower]


def open_store(job: JobConfig) -> CheckpointStore:
    return CheckpointStore(job.train.checkpoints, job.train.keep_last_checkpoints, SHARD_NAMES)


class RunCheckpointer:
    def __init__(self, job: JobConfig, topology: Topology, store: CheckpointStore):
        self.job, self.topology, self.store = job, topology, store

    def save(
        self, tower: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: PlateauSchedule, position: Position
    ) -> CheckpointRef | None:
        """Collective: every rank calls it at the same step. Returns the committed ref on rank 0."""
        step = position.global_step
        if self.topology.pair == 0:
            payload = {"model": tower.state_dict(), "optimizer": optimizer.state_dict(), "rng": capture_rng_state()}
            self.store.write_shard(step, shard_name(self.topology.tower), payload)
        with peers_required(self.topology.rank, f"the checkpoint barrier at step {step}"):
            dist.barrier()
        if not self.topology.is_primary:
            return None
        shared = {
            "epoch": position.epoch,
            "step_in_epoch": position.step_in_epoch,
            "global_step": step,
            "num_pairs": self.topology.num_pairs,
            "schedule": schedule.state_dict(),
        }
        return self.store.commit(step, shared, self.job.model_dump(mode="json"))

    def _choose(self) -> CheckpointRef | None:
        """Rank 0: the newest committed checkpoint whose files are intact (older ones if the newest is damaged)."""
        for ref in reversed(self.store.committed()):
            try:
                self.store.verify(ref)
                return ref
            except CheckpointError as err:
                print(f"resume: skipping damaged checkpoint: {err}", file=sys.stderr, flush=True)
        return None

    def restore(
        self, tower: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: PlateauSchedule
    ) -> Position | None:
        """Collective: loads the checkpoint rank 0 chose into every rank; None when there is none."""
        chosen = torch.tensor([-1], dtype=torch.int64, device=self.topology.device)
        if self.topology.is_primary:
            ref = self._choose()
            chosen.fill_(ref.step if ref is not None else -1)
        with peers_required(self.topology.rank, "the choice of checkpoint to resume"):
            dist.broadcast(chosen, src=0)
        step = int(chosen.item())
        if step < 0:
            return None
        ref = next((r for r in self.store.committed() if r.step == step), None)
        if ref is None:
            raise CheckpointError(
                f"{self.store.directory}: rank {self.topology.rank} cannot see checkpoint "
                f"step {step} that rank 0 chose (is the checkpoint folder shared by all ranks?)"
            )
        self.store.check_model_config(ref, self.job.model.model_dump(mode="json"), MODEL_FIELDS_THAT_MUST_MATCH)
        shard = self.store.load(ref, shard_name(self.topology.tower), map_location=self.topology.device)
        try:
            tower.load_state_dict(shard["model"])
            optimizer.load_state_dict(shard["optimizer"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(
                f"{ref.path}: shard {shard_name(self.topology.tower)} does not fit this model: {err}"
            ) from None
        restore_rng_state(shard["rng"])
        shared = self.store.load_shared(ref)
        schedule.load_state_dict(shared["schedule"])
        return self._position_for_this_layout(shared)

    def _position_for_this_layout(self, shared: dict) -> Position:
        """Mid-epoch positions count steps of the saving run's layout; convert them by images seen.

        Each pair reads its own contiguous block of the epoch's order, so with another number of
        pairs the rest of that epoch is not the same set of images: exact resume needs the same
        layout, or a checkpoint taken at an epoch end (step_in_epoch 0), which is exact in any layout.
        """
        saved_pairs = int(shared.get("num_pairs", 1))
        position = Position(int(shared["epoch"]), int(shared["step_in_epoch"]), int(shared["global_step"]))
        if saved_pairs != self.topology.num_pairs and position.step_in_epoch:
            images = position.step_in_epoch * saved_pairs
            position.step_in_epoch = images // self.topology.num_pairs
            if self.topology.is_primary:
                print(
                    f"resume: checkpoint from {saved_pairs} pair(s) mid-epoch, resuming with "
                    f"{self.topology.num_pairs}: continuing epoch {position.epoch + 1} at step "
                    f"{position.step_in_epoch} (same number of images seen, "
                    "not the same images)",
                    file=sys.stderr,
                    flush=True,
                )
        return position
