"""What training reports and which commands it takes, as protocols with do-nothing defaults. Torch-free.

The trainer talks to a `TelemetrySink` and polls a `CommandSource`; it never
asks whether anyone listens. Without a supervisor the worker plugs in
`NullTelemetry` and `NoCommands`; under one, `SupervisorTelemetry` and the
`SupervisorChannel` itself (whose `poll_command` is a `CommandSource`).

Who reports what: every rank reports its own intervals and its errors; the
facts all ranks share (an evaluation, a checkpoint, a state change) are
reported once, by global rank 0. The trainer keeps that rule, so a sink sends
what it is given.

The values are plain dataclasses of numbers and strings, so this module and its
callers on the service side never need torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from alexserve.contract.worker_messages import (
    CheckpointEvent,
    Command,
    ErrorEvent,
    ErrorReason,
    EvalReport,
    ExchangeTiming,
    StateEvent,
    StepReport,
    WorkerState,
    summarize_seconds,
)

if TYPE_CHECKING:
    from alexserve.contract.supervisor_channel import SupervisorChannel

__all__ = [
    "CommandSource",
    "ErrorReason",
    "EvalSummary",
    "ExchangeTime",
    "IntervalSummary",
    "NoCommands",
    "NullTelemetry",
    "SupervisorTelemetry",
    "TelemetrySink",
    "WorkerState",
]


@dataclass(frozen=True)
class ExchangeTime:
    """Time and bytes of one exchange point and direction, summed over an interval (this rank's view)."""

    point: str
    direction: str
    seconds: float
    bytes: int


@dataclass(frozen=True)
class IntervalSummary:
    """One reporting interval of one rank: the steps since the previous summary."""

    epoch: int  # zero-based epoch of the interval's last step
    global_step: int  # optimizer steps done after the interval
    steps: int  # optimizer steps in the interval
    images: int  # images this rank trained on in the interval
    loss: float  # mean training loss over the interval's images (NaN if it diverged)
    learning_rate: float
    step_seconds: list[float] = field(default_factory=list)
    data_wait_seconds: float = 0.0
    exchange: list[ExchangeTime] = field(default_factory=list)
    memory_bytes: int = 0  # device memory allocated (CUDA) or resident memory of the process (CPU)


@dataclass(frozen=True)
class EvalSummary:
    """Validation error after an epoch (fractions in 0..1); the ten-crop pair is None when it was skipped."""

    epoch: int  # zero-based epoch just evaluated
    global_step: int
    center_top1_error: float
    center_top5_error: float
    ten_crop_top1_error: float | None = None
    ten_crop_top5_error: float | None = None


class TelemetrySink(Protocol):
    """Where a worker's reports go. Every method returns at once: reporting never waits on a listener."""

    def interval(self, summary: IntervalSummary) -> None:
        """A stretch of training steps on this rank (every `train.log_every_steps` and at an epoch's end)."""

    def evaluation(self, summary: EvalSummary) -> None:
        """The validation error after an epoch (global rank 0)."""

    def checkpoint(self, global_step: int) -> None:
        """A checkpoint of every shard was committed (global rank 0)."""

    def state(self, state: WorkerState, global_step: int) -> None:
        """The group is now running, paused, stopped or completed, every rank at `global_step` (global rank 0)."""

    def error(self, message: str, reason: ErrorReason = "error") -> None:
        """A failure this rank is about to exit with; `reason` 'diverged' tells a diverged training from others."""


class NullTelemetry:
    """A sink that drops everything: the default when no supervisor started the worker."""

    def interval(self, summary: IntervalSummary) -> None:
        pass

    def evaluation(self, summary: EvalSummary) -> None:
        pass

    def checkpoint(self, global_step: int) -> None:
        pass

    def state(self, state: WorkerState, global_step: int) -> None:
        pass

    def error(self, message: str, reason: ErrorReason = "error") -> None:
        pass


class CommandSource(Protocol):
    """Where the supervisor's commands come from (polled by global rank 0 between steps)."""

    def poll_command(self) -> Command | None:
        """The next command, or None; never waits."""


class NoCommands:
    """A source that never has a command: the default when no supervisor started the worker."""

    def poll_command(self) -> Command | None:
        return None


class SupervisorTelemetry:
    """Sends each report as a `worker_messages` model over a `SupervisorChannel` (which never blocks)."""

    def __init__(self, channel: SupervisorChannel, pair: int, tower: int) -> None:
        self.channel, self.pair, self.tower = channel, pair, tower

    def interval(self, summary: IntervalSummary) -> None:
        self.channel.send(
            StepReport(
                job_id=self.channel.job_id,
                rank=self.channel.rank,
                pair=self.pair,
                tower=self.tower,
                epoch=summary.epoch,
                step=summary.global_step,
                steps=summary.steps,
                loss=summary.loss,
                learning_rate=summary.learning_rate,
                images=summary.images,
                step_seconds=summarize_seconds(summary.step_seconds),
                data_wait_seconds=summary.data_wait_seconds,
                exchange=[
                    ExchangeTiming(point=e.point, direction=e.direction, seconds=e.seconds, bytes=e.bytes)
                    for e in summary.exchange
                ],
                device_memory_bytes=summary.memory_bytes,
            )
        )

    def evaluation(self, summary: EvalSummary) -> None:
        self.channel.send(
            EvalReport(
                job_id=self.channel.job_id,
                rank=self.channel.rank,
                epoch=summary.epoch,
                step=summary.global_step,
                center_top1_error=summary.center_top1_error,
                center_top5_error=summary.center_top5_error,
                ten_crop_top1_error=summary.ten_crop_top1_error,
                ten_crop_top5_error=summary.ten_crop_top5_error,
            )
        )

    def checkpoint(self, global_step: int) -> None:
        self.channel.send(CheckpointEvent(job_id=self.channel.job_id, rank=self.channel.rank, step=global_step))

    def state(self, state: WorkerState, global_step: int) -> None:
        self.channel.send(StateEvent(job_id=self.channel.job_id, rank=self.channel.rank, state=state, step=global_step))

    def error(self, message: str, reason: ErrorReason = "error") -> None:
        self.channel.send(
            ErrorEvent(job_id=self.channel.job_id, rank=self.channel.rank, message=message, reason=reason)
        )
