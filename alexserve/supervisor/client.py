"""The client end of the control socket: `request` (one REQ round trip) and `Client` over it.

    client = Client("tcp://127.0.0.1:7355", token=None)
    job = client.submit(spec_tree, "job.yaml")
    client.wait_for(job["id"], {"completed", "failed"}, timeout_seconds=600)

`alexserve job` (alexserve/cli/job.py) is a thin shell over this. Every call
gives up after `timeout_seconds`: SupervisorUnreachable when nobody answers,
SupervisorError when the supervisor refuses (its reply's error).
"""

from __future__ import annotations

import json
import time
from typing import Any

import zmq

from alexserve.supervisor.control_messages import DEFAULT_CONTROL_ADDR, MAX_REQUEST_BYTES


class SupervisorUnreachable(RuntimeError):
    pass


class SupervisorError(RuntimeError):
    """The supervisor answered {"ok": false, "error": ...}."""


def request(address: str, payload: dict[str, Any], timeout_seconds: float = 10.0) -> Any:
    """Sends one request and returns the reply's result; never waits longer than `timeout_seconds`."""
    context = zmq.Context.instance()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout_seconds * 1000))
    sock.setsockopt(zmq.SNDTIMEO, int(timeout_seconds * 1000))
    sock.setsockopt(zmq.MAXMSGSIZE, 64 * MAX_REQUEST_BYTES)
    try:
        sock.connect(address)
        sock.send(json.dumps(payload).encode())
        data = sock.recv()
    except zmq.Again:
        raise SupervisorUnreachable(
            f"no answer from a supervisor at {address} within {timeout_seconds:g}s: is `alexserve supervisor` running "
            f"(and is this the address it printed)?"
        ) from None
    except zmq.ZMQError as err:
        raise SupervisorUnreachable(f"cannot reach a supervisor at {address}: {err}") from None
    finally:
        sock.close(linger=0)
    try:
        reply = json.loads(data)
    except json.JSONDecodeError:
        raise SupervisorError(f"{address} answered something that is not JSON") from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise SupervisorError(f"{address} answered an unexpected reply")
    if not reply["ok"]:
        raise SupervisorError(str(reply.get("error", "unknown error")))
    return reply.get("result")


class Client:
    """A small Python API over `request`, used by the CLI and the tests."""

    def __init__(
        self, address: str = DEFAULT_CONTROL_ADDR, token: str | None = None, timeout_seconds: float = 10.0
    ) -> None:
        self.address, self.token, self.timeout_seconds = address, token, timeout_seconds

    def call(self, verb: str, **fields: Any) -> Any:
        """Sends one request of `verb` (see control_messages.VERBS) and returns the reply's result."""
        payload = {"verb": verb, **fields}
        if self.token is not None:
            payload["token"] = self.token
        return request(self.address, payload, self.timeout_seconds)

    def submit(self, spec: dict[str, Any], origin: str = "job spec") -> dict[str, Any]:
        return self.call("submit", spec=spec, origin=origin)

    def list(self) -> list[dict[str, Any]]:
        return self.call("list")["jobs"]

    def status(self, job_id: str) -> dict[str, Any]:
        return self.call("status", job_id=job_id)

    def wait_for(
        self, job_id: str, states: set[str], timeout_seconds: float, poll_seconds: float = 0.2
    ) -> dict[str, Any]:
        """Polls status until the job's state is one of `states`; TimeoutError (with the last status) otherwise."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            status = self.status(job_id)
            if status["state"] in states:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{job_id} still {status['state']} after {timeout_seconds:g}s: {status.get('reason')}"
                )
            time.sleep(poll_seconds)
