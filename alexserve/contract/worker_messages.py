"""What workers tell the supervisor, and what the supervisor tells workers.

Every message is one ZeroMQ frame holding one JSON object whose `kind` field
picks the model. Models are strict (no type coercion, unknown fields are
errors) and bounded (string lengths, list lengths, the frame's byte size), so a
confused or hostile sender costs the supervisor one rejected message, nothing
more.

Every frame a worker sends travels as two: the job's channel secret (`ALEXSERVE_CHANNEL_SECRET`,
created by the supervisor for each job), then the message. The supervisor drops and counts any
message whose secret is not its job's (`SupervisorChannel` does the framing).

Worker -> supervisor, over PUSH/PULL (`ALEXSERVE_REPORT_ADDR`), from every rank:

    StepReport       one report interval: loss, images, step times, data wait,
                     exchange seconds/bytes per point and direction, memory
    EvalReport       validation top-1/top-5 error (centre crop, ten-crop)
    CheckpointEvent  a checkpoint was committed (global rank 0 sends it)
    StateEvent       running / paused / stopped / completed (global rank 0)
    ErrorEvent       a human-readable failure, sent before a non-zero exit; its
                     `reason` tells a diverged training from any other error

Worker global rank 0 <-> supervisor, over DEALER/ROUTER (`ALEXSERVE_CONTROL_ADDR`):

    Hello            rank 0 -> supervisor, once on connect: "commands for job X
                     come to me" (behind the job's secret, like every report)
    PauseCommand, ResumeCommand, StopCommand, CheckpointNowCommand
                     supervisor -> rank 0; the worker shares the decision with
                     all ranks so both towers act at the same step.

`parse_report` and `parse_command` turn bytes into models and raise
`MessageError` for anything else (too large, not JSON, wrong fields).
"""

from __future__ import annotations

import json
import math
import time
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from alexserve.contract.names import EXCHANGE_DIRECTIONS, TIMED_EXCHANGE_POINTS

# Size limits of one frame. A step report with the default 1024 step times and
# every exchange point is about 25 KB, so 64 KiB leaves room without letting a
# sender make the supervisor buffer much.
MAX_REPORT_BYTES = 64 * 1024
MAX_COMMAND_BYTES = 4 * 1024
MAX_SECRET_BYTES = 128  # the channel secret frame (secrets.token_hex(32) is 64 bytes)
MAX_STEP_SECONDS = 1024  # step durations per StepReport (the worker keeps the newest)

WorkerState = Literal["running", "paused", "stopped", "completed"]
WORKER_STATES = get_args(WorkerState)
ErrorReason = Literal["error", "diverged"]
MAX_RANKS = 64  # ranks of one job; keeps `rank` label values bounded

JobId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
Rank = Annotated[int, Field(ge=0, lt=MAX_RANKS)]
Seconds = Annotated[float, Field(ge=0.0, le=1e9, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=2**62)]
ErrorRatio = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class MessageError(ValueError):
    """Bytes that are not a valid message; the text says why, briefly."""


class Message(BaseModel):
    """Strict, frozen, no extra fields. JSON input still accepts 1 for 1.0 (JSON has one number type)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, ser_json_inf_nan="constants")

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


# ---------------------------------------------------------------- worker -> supervisor


class ExchangeTiming(Message):
    """Time and bytes of one exchange point and direction, summed over the report interval (this rank's view)."""

    point: Literal[TIMED_EXCHANGE_POINTS]
    direction: Literal["forward", "backward"]
    seconds: Seconds
    bytes: Count


class StepReport(Message):
    """One report interval of one rank (sent every `train.log_every_steps` steps and at the end of an epoch)."""

    kind: Literal["step"] = "step"
    job_id: JobId
    rank: Rank = Field(description="Global rank of the sender.")
    pair: int = Field(ge=0, lt=MAX_RANKS // 2, description="Data-parallel index of the sender's tower pair.")
    tower: Literal[0, 1]
    epoch: int = Field(ge=0, le=1_000_000, description="Zero-based epoch of the last step in the interval.")
    step: Count = Field(description="Global optimizer steps done after the interval.")
    steps: int = Field(ge=0, le=1_000_000, description="Optimizer steps in this interval.")
    loss: float = Field(allow_inf_nan=True, description="Mean training loss over the interval (NaN if it diverged).")
    learning_rate: float = Field(ge=0.0, allow_inf_nan=False)
    images: Count = Field(
        description="Images this rank trained on in the interval (a pair's two towers see the same images)."
    )
    step_seconds: list[Seconds] = Field(
        default_factory=list, max_length=MAX_STEP_SECONDS, description="Duration of each step of the interval."
    )
    data_wait_seconds: Seconds = Field(0.0, description="Time spent waiting for input batches in the interval.")
    exchange: list[ExchangeTiming] = Field(
        default_factory=list, max_length=len(TIMED_EXCHANGE_POINTS) * len(EXCHANGE_DIRECTIONS) * 4
    )
    device_memory_bytes: Count = Field(
        0, description="Device (CUDA) memory allocated, or the process's resident memory on CPU."
    )


class EvalReport(Message):
    """Validation error after an epoch; ratios in 0..1. Sent by global rank 0."""

    kind: Literal["eval"] = "eval"
    job_id: JobId
    rank: Rank = 0
    epoch: int = Field(ge=0, le=1_000_000, description="Zero-based epoch just evaluated.")
    step: Count = 0
    center_top1_error: ErrorRatio
    center_top5_error: ErrorRatio
    ten_crop_top1_error: ErrorRatio | None = None
    ten_crop_top5_error: ErrorRatio | None = None


class CheckpointEvent(Message):
    """A checkpoint of all shards was committed (sent by global rank 0 after `commit`)."""

    kind: Literal["checkpoint"] = "checkpoint"
    job_id: JobId
    rank: Rank = 0
    step: Count
    timestamp: float = Field(
        default_factory=time.time, gt=0.0, allow_inf_nan=False, description="Unix time of the commit."
    )


class StateEvent(Message):
    """The worker group's state changed; `step` is where every rank is (they act at the same step)."""

    kind: Literal["state"] = "state"
    job_id: JobId
    rank: Rank = 0
    state: WorkerState
    step: Count


class ErrorEvent(Message):
    """A failure worth showing in `alexserve job status` (the log has the traceback)."""

    kind: Literal["error"] = "error"
    job_id: JobId
    rank: Rank = 0
    message: str = Field(max_length=4000)
    reason: ErrorReason = Field(
        "error",
        description="'diverged': the loss diverged; a relaunch would diverge again, "
        "so the supervisor fails the job without one.",
    )

    @field_validator("message", mode="before")
    @classmethod
    def _truncate(cls, value: object) -> object:
        # Let a worker send a long traceback's last line without failing validation.
        return value[-4000:] if isinstance(value, str) else value


class Hello(Message):
    """Global rank 0 announces its command socket; the supervisor routes the job's commands to it."""

    kind: Literal["hello"] = "hello"
    job_id: JobId
    rank: Rank = 0


Report = Annotated[
    StepReport | EvalReport | CheckpointEvent | StateEvent | ErrorEvent | Hello, Field(discriminator="kind")
]

# ---------------------------------------------------------------- supervisor -> worker rank 0


class _Command(Message):
    job_id: JobId
    command_id: int = Field(0, ge=0, le=2**62, description="Supervisor's sequence number, for logs.")


class PauseCommand(_Command):
    """Stop stepping (both ranks at the same step) until resume or stop; send StateEvent paused."""

    kind: Literal["pause"] = "pause"


class ResumeCommand(_Command):
    """Continue after a pause; send StateEvent running."""

    kind: Literal["resume"] = "resume"


class StopCommand(_Command):
    """Write a checkpoint, send StateEvent stopped, exit 0."""

    kind: Literal["stop"] = "stop"


class CheckpointNowCommand(_Command):
    """Write a checkpoint at the next step boundary and keep training (send CheckpointEvent)."""

    kind: Literal["checkpoint_now"] = "checkpoint_now"


Command = Annotated[PauseCommand | ResumeCommand | StopCommand | CheckpointNowCommand, Field(discriminator="kind")]
# The one list of command kinds, read off `Command` itself (train/control.py numbers its actions from it).
COMMAND_KINDS: tuple[str, ...] = tuple(
    get_args(model.model_fields["kind"].annotation)[0] for model in get_args(get_args(Command)[0])
)

_REPORT = TypeAdapter(Report)
_COMMAND = TypeAdapter(Command)


def describe_validation_error(err: ValidationError, limit: int = 8) -> str:
    """`field: problem; ...` for every bad field (first `limit`), short enough for a reply or a log line."""
    parts = []
    for e in err.errors()[:limit]:
        where = ".".join(str(p) for p in e["loc"]) or "(message)"
        parts.append(f"{where}: {e['msg']}")
    more = err.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _parse(adapter: TypeAdapter, data: bytes, limit: int, what: str):
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > limit:
        raise MessageError(f"{what}: {len(data)} bytes, over the limit of {limit}")
    try:
        tree = json.loads(bytes(data))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MessageError(f"{what}: not JSON ({err})") from None
    if not isinstance(tree, dict):
        raise MessageError(f"{what}: expected a JSON object, got {type(tree).__name__}")
    try:
        return adapter.validate_python(tree)
    except ValidationError as err:
        raise MessageError(f"{what}: {describe_validation_error(err)}") from None


def parse_report(data: bytes) -> StepReport | EvalReport | CheckpointEvent | StateEvent | ErrorEvent | Hello:
    """A worker report from one frame; MessageError when it is not one."""
    return _parse(_REPORT, data, MAX_REPORT_BYTES, "report")


def parse_command(data: bytes) -> Command:
    """A command from one frame; MessageError when it is not one."""
    return _parse(_COMMAND, data, MAX_COMMAND_BYTES, "command")


def summarize_seconds(values: list[float], keep: int = MAX_STEP_SECONDS) -> list[float]:
    """The newest `keep` finite, non-negative durations: what fits in `StepReport.step_seconds`."""
    clean = [float(v) for v in values if math.isfinite(v) and v >= 0.0]
    return clean[-keep:]
