"""The control protocol between `alexserve job` (REQ) and the supervisor (REP).

One request frame, one reply frame, both JSON objects. A request names its
`verb` (the discriminator) and carries the token when the supervisor has one:

    {"verb": "submit", "spec": {...}, "origin": "job.yaml", "token": "..."}
    {"verb": "list"}
    {"verb": "status" | "pause" | "resume" | "stop" | "cancel" | "checkpoint_now", "job_id": "job-3"}
    {"verb": "logs", "job_id": "job-3", "lines": 50}
    {"verb": "ping"}

Every reply is `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`;
anything malformed (not JSON, wrong types, unknown verb, too large) gets an
error reply, never silence.

`REQUESTS` is the one list of verbs: the request union, `VERBS`, the
supervisor's handler table (`verbs.py`) and the `alexserve job` subcommands
(`alexserve/cli/job.py`) are all derived from it. Each request's docstring is
its subcommand's help.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import Field, TypeAdapter, ValidationError

from alexserve.contract.worker_messages import JobId, Message, MessageError, describe_validation_error

MAX_REQUEST_BYTES = 1024 * 1024  # larger requests get an error reply
SOCKET_MAX_MESSAGE_BYTES = 4 * MAX_REQUEST_BYTES  # larger frames make ZeroMQ drop the sender's connection
MAX_LOG_LINES = 10_000
DEFAULT_CONTROL_ADDR = "tcp://127.0.0.1:7355"
DEFAULT_METRICS_PORT = 7356

Token = Annotated[str | None, Field(None, max_length=512)]


class SubmitRequest(Message):
    """Validate a job spec (YAML/JSON) and queue it."""

    verb: Literal["submit"]
    spec: dict[str, Any]
    origin: str = Field("job spec", max_length=512, description="Where the spec came from, for error messages.")
    token: Token = None


class ListRequest(Message):
    """Every job and its state."""

    verb: Literal["list"]
    token: Token = None


class PingRequest(Message):
    """Is the supervisor up: its uptime and job counts."""

    verb: Literal["ping"]
    token: Token = None


class JobRequest(Message):
    """A request about one job (its id is the subcommand's argument)."""

    job_id: JobId
    token: Token = None


class StatusRequest(JobRequest):
    """One job in detail."""

    verb: Literal["status"]


class PauseRequest(JobRequest):
    """Pause a running job (both ranks at the same step)."""

    verb: Literal["pause"]


class ResumeRequest(JobRequest):
    """Resume a paused job, or relaunch a stopped/failed/cancelled one from its checkpoint."""

    verb: Literal["resume"]


class StopRequest(JobRequest):
    """Checkpoint, then exit cleanly."""

    verb: Literal["stop"]


class CancelRequest(JobRequest):
    """Kill the job's workers now."""

    verb: Literal["cancel"]


class CheckpointNowRequest(JobRequest):
    """Write a checkpoint at the next step and keep training."""

    verb: Literal["checkpoint_now"]


class LogsRequest(JobRequest):
    """The tail of the job's worker log."""

    verb: Literal["logs"]
    lines: int = Field(50, ge=1, le=MAX_LOG_LINES)


REQUESTS: tuple[type[Message], ...] = (
    SubmitRequest,
    ListRequest,
    PingRequest,
    StatusRequest,
    PauseRequest,
    ResumeRequest,
    StopRequest,
    CancelRequest,
    CheckpointNowRequest,
    LogsRequest,
)
"""Every control request, one per verb: the single list the rest is derived from."""


def verb_of(model: type[Message]) -> str:
    """The verb a request model answers to (its `verb` field's one literal value)."""
    (verb,) = get_args(model.model_fields["verb"].annotation)
    return verb


VERBS: tuple[str, ...] = tuple(verb_of(model) for model in REQUESTS)
REQUEST_BY_VERB: dict[str, type[Message]] = dict(zip(VERBS, REQUESTS))
Request = Annotated[Union[REQUESTS], Field(discriminator="verb")]  # noqa: UP007 (a Union of a tuple)
_REQUEST = TypeAdapter(Request)


def decode_request_tree(data: bytes) -> dict[str, Any]:
    """The JSON object of a request frame; MessageError for anything else."""
    if len(data) > MAX_REQUEST_BYTES:
        raise MessageError(f"request of {len(data)} bytes is over the limit of {MAX_REQUEST_BYTES}")
    try:
        tree = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise MessageError(f"request is not JSON: {str(err)[:200]}") from None
    if not isinstance(tree, dict):
        raise MessageError(f"request must be a JSON object, got {type(tree).__name__}")
    return tree


def validate_request(tree: dict[str, Any]):
    verb = tree.get("verb")
    if isinstance(verb, str) and verb not in VERBS:
        raise MessageError(f"unknown verb {verb[:64]!r}; known: {', '.join(VERBS)}")
    try:
        return _REQUEST.validate_python(tree)
    except (ValidationError, RecursionError) as err:
        detail = describe_validation_error(err) if isinstance(err, ValidationError) else "nested too deeply"
        raise MessageError(f"invalid request: {detail}") from None


def ok_reply(result: Any) -> bytes:
    return json.dumps({"ok": True, "result": result}, default=str).encode()


def error_reply(message: str) -> bytes:
    return json.dumps({"ok": False, "error": message}).encode()
