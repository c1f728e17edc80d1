"""`alexserve job`: talk to a running supervisor.

    alexserve job submit job.yaml [--set config.train.max_steps=100]
    alexserve job list
    alexserve job status job-3
    alexserve job pause|resume|stop|cancel|checkpoint-now job-3
    alexserve job logs job-3 [-n 100]

The supervisor is found at --supervisor, else $ALEXSERVE_SUPERVISOR, else
tcp://127.0.0.1:7355; the token (when it has one) comes from --token-file or
$ALEXSERVE_TOKEN. Exit codes: 0 done, 1 the supervisor answered an error,
2 bad usage or an invalid spec (nothing sent), 3 no supervisor answered.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from alexserve.supervisor.auth import AuthError, read_token
from alexserve.supervisor.control_messages import DEFAULT_CONTROL_ADDR, MAX_REQUEST_BYTES
from alexserve.config import ConfigError
from alexserve.supervisor.spec import read_spec_tree, spec_from_tree

from alexserve.contract.names import ENV_SUPERVISOR
EXIT_ERROR_REPLY, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


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

    def __init__(self, address: str = DEFAULT_CONTROL_ADDR, token: str | None = None, timeout_seconds: float = 10.0) -> None:
        self.address, self.token, self.timeout_seconds = address, token, timeout_seconds

    def call(self, verb: str, **fields: Any) -> Any:
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

    def wait_for(self, job_id: str, states: set[str], timeout_seconds: float, poll_seconds: float = 0.2) -> dict[str, Any]:
        """Polls status until the job's state is one of `states`; TimeoutError (with the last status) otherwise."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            status = self.status(job_id)
            if status["state"] in states:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"{job_id} still {status['state']} after {timeout_seconds:g}s: {status.get('reason')}")
            time.sleep(poll_seconds)


def _format_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def print_list(jobs: list[dict[str, Any]]) -> None:
    if not jobs:
        print("no jobs")
        return
    print(f"{'ID':<10} {'NAME':<16} {'STATE':<10} {'STEP':>8} {'RESTARTS':>8}  {'CREATED':<19}  REASON")
    for j in jobs:
        print(f"{j['id']:<10} {(j['name'] or '-'):<16} {j['state']:<10} {j['step']:>8} {j['restarts']:>8}  "
              f"{_format_time(j['created_at']):<19}  {j['reason']}")


def print_status(status: dict[str, Any]) -> None:
    keys = ["id", "name", "state", "reason", "step", "epoch", "loss", "restarts_total", "max_restarts", "attempts",
            "newest_checkpoint_step", "last_checkpoint_step", "last_error", "exit_code", "run_dir", "log_path"]
    for key in keys:
        print(f"{key + ':':<24}{status.get(key)}")
    for key in ("created_at", "started_at", "finished_at"):
        print(f"{key + ':':<24}{_format_time(status.get(key))}")
    for rank, info in status.get("ranks", {}).items():
        print(f"{'rank ' + rank + ':':<24}step {info['step']}, state {info['state'] or '-'}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--supervisor", default=os.environ.get(ENV_SUPERVISOR, DEFAULT_CONTROL_ADDR),
                        help=f"control endpoint (default: ${ENV_SUPERVISOR} or {DEFAULT_CONTROL_ADDR})")
    common.add_argument("--token-file", type=Path, help="file holding the supervisor's token (else $ALEXSERVE_TOKEN)")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer")
    common.add_argument("--json", action="store_true", help="print the raw reply as JSON")
    parser = argparse.ArgumentParser(prog="alexserve job", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    submit = verbs.add_parser("submit", parents=[common], help="validate a job spec (YAML/JSON) and queue it")
    submit.add_argument("spec", type=Path)
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override one spec field, e.g. config.train.max_steps=100 (repeatable)")
    verbs.add_parser("list", parents=[common], help="every job and its state")
    for verb, help_ in (("status", "one job in detail"), ("pause", "pause a running job (both ranks at the same step)"),
                        ("resume", "resume a paused job, or relaunch a stopped/failed/cancelled one from its checkpoint"),
                        ("stop", "checkpoint, then exit cleanly"), ("cancel", "kill the job's workers now"),
                        ("checkpoint-now", "write a checkpoint at the next step and keep training")):
        sub = verbs.add_parser(verb, parents=[common], help=help_)
        sub.add_argument("job_id")
    logs = verbs.add_parser("logs", parents=[common], help="the tail of the job's worker log")
    logs.add_argument("job_id")
    logs.add_argument("-n", "--lines", type=int, default=50)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        token = read_token(args.token_file)
    except AuthError as err:
        print(f"alexserve job: {err}", file=sys.stderr)
        return EXIT_USAGE
    client = Client(args.supervisor, token, args.timeout)
    try:
        if args.verb == "submit":
            tree = json.loads(json.dumps(read_spec_tree(args.spec), default=str))  # YAML dates and the like as strings
            spec_from_tree(tree, str(args.spec), args.overrides)  # applies the overrides to `tree`; fails here, not remotely
            result = client.submit(tree, str(args.spec))
        elif args.verb == "list":
            result = client.call("list")
        elif args.verb == "logs":
            result = client.call("logs", job_id=args.job_id, lines=args.lines)
        else:
            result = client.call(args.verb.replace("-", "_"), job_id=args.job_id)
    except ConfigError as err:  # SpecError included
        print(f"alexserve job: {err}\nnothing submitted", file=sys.stderr)
        return EXIT_USAGE
    except SupervisorUnreachable as err:
        print(f"alexserve job: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except SupervisorError as err:
        print(f"alexserve job {args.verb}: the supervisor refused: {err}", file=sys.stderr)
        return EXIT_ERROR_REPLY
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.verb == "submit":
        print(f"{result['id']} {result['state']}")
    elif args.verb == "list":
        print_list(result["jobs"])
    elif args.verb == "status":
        print_status(result)
    elif args.verb == "logs":
        sys.stdout.write(result["text"])
    else:
        print(f"{result['id']} {result['state']}" + (f" ({result['requested']} requested)" if "requested" in result else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
