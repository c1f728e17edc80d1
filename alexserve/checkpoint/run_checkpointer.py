"""Saving and restoring a whole training run, across all ranks, through `CheckpointStore`.

Tower t's shard (weights, optimizer state, RNG states) is written by the rank
running tower t of pair 0: data-parallel pairs hold identical copies, so one per
tower suffices and a checkpoint loads into any number of pairs. Rank 0 commits
after a barrier, so the commit marker exists only once every shard is whole.

Whose checkpoints: the supervisor gives each job's workers its identity
(ALEXSERVE_JOB_ID, `job_identity`); the store records it in every checkpoint,
and a supervised job resumes only from checkpoints that record its own
identity (CheckpointError, exit code 2, naming both identities and the folder).
A worker run by hand has no identity and resumes whatever the folder holds.

What a resume does with a config that changed since the checkpoint (README,
"Training, checkpoints, resume"): a model field that changes parameter shapes
or the function they compute (`MODEL_FIELDS_THAT_MUST_MATCH`) is refused with
the field named; every other changed field is applied, and rank 0 prints a
notice naming it with the checkpoint's value and the new one. In particular
a changed `optim.learning_rate` replaces the rate the saved schedule had
reached, and a changed momentum or weight decay replaces the saved optimizer's.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist

from alexserve.checkpoint.rng_state import capture_rng_state, restore_rng_state
from alexserve.checkpoint.store import (
    CheckpointError,
    CheckpointRef,
    CheckpointStore,
)
from alexserve.config import JobConfig
from alexserve.contract.names import ENV_JOB_ID, ENV_RUN_ID
from alexserve.parallel.exchange import peers_required
from alexserve.parallel.topology import Topology

SHARD_NAMES = ("tower0", "tower1")


class ResumableSchedule(Protocol):
    """What a checkpoint needs of the learning-rate schedule (train/schedule.py's `PlateauSchedule` is one).

    A protocol rather than an import: the checkpoint layer sits below training and must not reach up into it.
    """

    lr: float  # the rate reached; a resume with a changed optim.learning_rate replaces it
    num_reductions: int

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


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
    "lrn_size",
    "lrn_alpha",
    "lrn_beta",
    "lrn_k",
)
# Changed fields that are applied but whose effect is worth saying.
_APPLIED_NOTES = {
    "model.init_scheme": "initialisation only: no effect on restored weights",
    "model.init_weight_std": "initialisation only: no effect on restored weights",
    "model.init_bias_one_layers": "initialisation only: no effect on restored weights",
    "train.seed": "the rest of the run draws other data orders, crops and dropout masks",
    "train.batch_size": "a mid-epoch position continues with the same number of images seen",
    "optim.reductions_within_budget": "None means auto: below paper size the rate also drops when no more epochs are "
    "left than reductions are due",
}


@dataclass
class Position:
    """Where training stands: the next step to run is `step_in_epoch` of `epoch`."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


def shard_name(tower: int) -> str:
    return SHARD_NAMES[tower]


def job_identity() -> str | None:
    """The supervisor job this worker belongs to (ALEXSERVE_JOB_ID), or None for a worker run by hand."""
    return os.environ.get(ENV_RUN_ID) or os.environ.get(ENV_JOB_ID) or None  # RUN_ID: kept by `continues`


def open_store(job: JobConfig, job_id: str | None = None) -> CheckpointStore:
    return CheckpointStore(job.train.checkpoints, job.train.keep_last_checkpoints, SHARD_NAMES, job_id=job_id)


class RunCheckpointer:
    def __init__(self, job: JobConfig, topology: Topology, store: CheckpointStore):
        self.job, self.topology, self.store = job, topology, store

    def save(
        self, tower: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: ResumableSchedule, position: Position
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
        self, tower: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: ResumableSchedule
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
        problem = self.store.identity_problem(ref)
        if problem is not None:
            raise CheckpointError(problem)
        self.store.check_model_config(ref, self.job.model.model_dump(mode="json"), MODEL_FIELDS_THAT_MUST_MATCH)
        name = shard_name(self.topology.tower)
        shard = self.store.load(ref, name, map_location=self.topology.device)
        _check_finite(shard, ref.path / f"{name}.pt")
        try:
            tower.load_state_dict(shard["model"])
            optimizer.load_state_dict(shard["optimizer"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(
                f"{ref.path}: shard {shard_name(self.topology.tower)} does not fit this model: {err}"
            ) from None
        restore_rng_state(shard["rng"])
        shared = self.store.load_shared(ref)
        _check_shared(shared, ref)
        schedule.load_state_dict(shared["schedule"])
        saved_job = self.store.load_config(ref)
        notices = self._apply_changes(saved_job, optimizer, schedule)
        if notices and self.topology.is_primary:
            lines = "\n".join(f"  - {line}" for line in notices)
            print(
                f"resume: the config differs from the checkpoint's ({ref.path}); applied:\n{lines}",
                file=sys.stderr,
                flush=True,
            )
        return self._position_for_this_layout(shared, saved_job)

    def _apply_changes(
        self, saved_job: dict[str, Any], optimizer: torch.optim.Optimizer, schedule: ResumableSchedule
    ) -> list[str]:
        """Applies the running config over the restored state; one notice per field that differs from the saved job.

        The restored optimizer and schedule carry the saved run's values: the running config's
        momentum and weight decay are put back into the optimizer, and a changed learning rate
        replaces the rate the schedule had reached (divisor, patience and budget are always the
        running config's). Everything else is read from the running config anyway.
        """
        for group in optimizer.param_groups:
            group["momentum"] = self.job.optim.momentum
            group["weight_decay"] = self.job.optim.weight_decay
        saved, running = _flatten(saved_job), _flatten(self.job.model_dump(mode="json"))
        notices = []
        for field in sorted(set(saved) | set(running)):
            old, new = saved.get(field, "<absent>"), running.get(field, "<absent>")
            if old == new:
                continue
            if field in saved:
                notice = f"{field}: {old!r} in the checkpoint, {new!r} now"
            else:
                notice = f"{field}: not in the checkpoint (written before alexserve had this field), {new!r} now"
            if field == "optim.learning_rate":
                reached = schedule.lr
                schedule.lr = float(self.job.optim.learning_rate)
                notice += (
                    f"; training continues at {schedule.lr:g} (the saved schedule was at {reached:g} after "
                    f"{schedule.num_reductions} reduction(s); later drops divide the new rate)"
                )
            elif field in _APPLIED_NOTES:
                notice += f" ({_APPLIED_NOTES[field]})"
            notices.append(notice)
        return notices

    def _position_for_this_layout(self, shared: dict, saved_job: dict[str, Any]) -> Position:
        """Mid-epoch positions count steps of the saving run's layout; convert them by images seen.

        Each pair reads its own contiguous block of the epoch's order, so with another number of
        pairs (or another batch size) the rest of that epoch is not the same set of images: exact
        resume needs the same layout, or a checkpoint taken at an epoch end (step_in_epoch 0),
        which is exact in any layout.
        """
        saved_pairs = int(shared.get("num_pairs", 1))
        saved_batch = _saved_batch_size(saved_job, self.job.train.batch_size)
        position = Position(int(shared["epoch"]), int(shared["step_in_epoch"]), int(shared["global_step"]))
        layout, saved_layout = (self.topology.num_pairs, self.job.train.batch_size), (saved_pairs, saved_batch)
        if layout != saved_layout and position.step_in_epoch:
            images = position.step_in_epoch * saved_pairs * saved_batch
            position.step_in_epoch = images // (self.topology.num_pairs * self.job.train.batch_size)
            if self.topology.is_primary:
                print(
                    f"resume: checkpoint from {saved_pairs} pair(s) of batch {saved_batch} mid-epoch, resuming with "
                    f"{self.topology.num_pairs} of batch {self.job.train.batch_size}: continuing epoch "
                    f"{position.epoch + 1} at step {position.step_in_epoch} (same number of images seen, "
                    "not the same images)",
                    file=sys.stderr,
                    flush=True,
                )
        return position


def _saved_batch_size(saved_job: dict[str, Any], default: int) -> int:
    batch = saved_job.get("train", {}).get("batch_size") if isinstance(saved_job.get("train"), dict) else None
    return batch if type(batch) is int and batch >= 1 else default


def _flatten(job: dict[str, Any]) -> dict[str, Any]:
    """{"optim": {"learning_rate": 0.01}} -> {"optim.learning_rate": 0.01}, values through JSON (tuples -> lists)."""
    flat = {}
    for section, fields in json.loads(json.dumps(job, default=str)).items():
        if isinstance(fields, dict):
            flat.update({f"{section}.{name}": value for name, value in fields.items()})
        else:
            flat[section] = fields
    return flat


def _check_finite(shard: dict[str, Any], path) -> None:
    """Refuses a shard whose weights or optimizer state hold a value that is not finite, naming the tensor."""

    def walk(value: Any, where: str) -> None:
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not bool(value.isfinite().all()):
                raise CheckpointError(f"{path}: {where} holds a value that is not finite (NaN or infinity)")
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}[{key!r}]")
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(item, f"{where}[{index}]")

    walk(shard.get("model"), "model")
    walk(shard.get("optimizer"), "optimizer")


def _check_shared(shared: dict[str, Any], ref: CheckpointRef) -> None:
    """Refuses a shared part whose position or schedule numbers are missing, of the wrong type or not finite."""
    path = ref.path / "shared.pt"

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: {what}")

    for key in ("epoch", "step_in_epoch", "global_step"):
        if type(shared.get(key)) is not int or shared[key] < 0:
            raise bad(f"{key} is {shared.get(key)!r}, expected a count (an int >= 0)")
    if shared["global_step"] != ref.step:
        raise bad(f"global_step {shared['global_step']} is not the checkpoint's step {ref.step}")
    pairs = shared.get("num_pairs", 1)
    if type(pairs) is not int or pairs < 1:
        raise bad(f"num_pairs is {pairs!r}, expected an int >= 1")
    schedule = shared.get("schedule")
    if not isinstance(schedule, dict):
        raise bad("has no schedule state")
    lr, best = schedule.get("lr"), schedule.get("best_error")
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise bad(f"schedule lr is {lr!r}, expected a finite number > 0")
    # best_error is +inf until the first validation: only NaN and -inf are damage.
    if not isinstance(best, (int, float)) or math.isnan(best) or best == -math.inf:
        raise bad(f"schedule best_error is {best!r}, expected a number (+inf before the first validation)")
