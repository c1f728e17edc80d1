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
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import Field, TypeAdapter, ValidationError

from alexserve.contract.worker_messages import JobId, Message, MessageError, describe_validation_error

MAX_REQUEST_BYTES = 1024 * 1024  # larger requests get an error reply
SOCKET_MAX_MESSAGE_BYTES = 4 * MAX_REQUEST_BYTES  # larger frames make ZeroMQ drop the sender's connection
MAX_LOG_LINES = 10_000
DEFAULT_CONTROL_ADDR = "tcp://127.0.0.1:7355"
DEFAULT_METRICS_PORT = 7356

Token = Annotated[str | None, Field(None, max_length=512)]


class SubmitRequest(Message):
    verb: Literal["submit"]
    spec: dict[str, Any]
    origin: str = Field("job spec", max_length=512, description="Where the spec came from, for error messages.")
    token: Token = None


class ListRequest(Message):
    verb: Literal["list"]
    token: Token = None


class PingRequest(Message):
    verb: Literal["ping"]
    token: Token = None


class _JobRequest(Message):
    job_id: JobId
    token: Token = None


class StatusRequest(_JobRequest):
    verb: Literal["status"]


class PauseRequest(_JobRequest):
    verb: Literal["pause"]


class ResumeRequest(_JobRequest):
    verb: Literal["resume"]


class StopRequest(_JobRequest):
    verb: Literal["stop"]


class CancelRequest(_JobRequest):
    verb: Literal["cancel"]


class CheckpointNowRequest(_JobRequest):
    verb: Literal["checkpoint_now"]


class LogsRequest(_JobRequest):
    verb: Literal["logs"]
    lines: int = Field(50, ge=1, le=MAX_LOG_LINES)


Request = Annotated[
    Union[SubmitRequest, ListRequest, PingRequest, StatusRequest, PauseRequest, ResumeRequest, StopRequest,
          CancelRequest, CheckpointNowRequest, LogsRequest],
    Field(discriminator="verb"),
]
VERBS = ("submit", "list", "ping", "status", "pause", "resume", "stop", "cancel", "checkpoint_now", "logs")
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
