"""`alexserve job`: talk to a running supervisor.

    alexserve job submit job.yaml [--set config.train.max_steps=100]   # run_dir is relative to the runs root
    alexserve job submit more.yaml --set continues=job-3                # job-3's folders, continued
    alexserve job list
    alexserve job status job-3
    alexserve job pause|resume|stop|cancel|checkpoint-now job-3
    alexserve job logs job-3 [-n 100]
    alexserve job ping

The supervisor is found at --supervisor, else $ALEXSERVE_SUPERVISOR, else
tcp://127.0.0.1:7355; the token (when it has one) comes from --token-file or
$ALEXSERVE_TOKEN. Exit codes: 0 done, 1 the supervisor answered an error,
2 bad usage or an invalid spec (nothing sent), 3 no supervisor answered.

One subcommand per control verb (`alexserve.supervisor.control_messages.REQUESTS`,
`_` written `-`); library: `alexserve.supervisor.client.Client`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from alexserve.config import ConfigError
from alexserve.contract.names import ENV_SUPERVISOR
from alexserve.supervisor.auth import AuthError, read_token
from alexserve.supervisor.client import Client, SupervisorError, SupervisorUnreachable
from alexserve.supervisor.control_messages import (
    DEFAULT_CONTROL_ADDR,
    REQUESTS,
    JobRequest,
    LogsRequest,
    SubmitRequest,
    verb_of,
)
from alexserve.supervisor.spec import read_spec_tree, spec_from_tree

PROG = "alexserve job"
EXIT_ERROR_REPLY, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


def subcommand(verb: str) -> str:
    return verb.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--supervisor",
        default=os.environ.get(ENV_SUPERVISOR, DEFAULT_CONTROL_ADDR),
        help=f"control endpoint (default: ${ENV_SUPERVISOR} or {DEFAULT_CONTROL_ADDR})",
    )
    common.add_argument("--token-file", type=Path, help="file holding the supervisor's token (else $ALEXSERVE_TOKEN)")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer")
    common.add_argument("--json", action="store_true", help="print the raw reply as JSON")
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subparsers = parser.add_subparsers(dest="subcommand", required=True, metavar="VERB")
    for model in REQUESTS:
        verb = verb_of(model)
        sub = subparsers.add_parser(subcommand(verb), parents=[common], help=model.__doc__.strip().rstrip("."))
        sub.set_defaults(verb=verb)
        if issubclass(model, SubmitRequest):
            sub.add_argument("spec", type=Path)
            sub.add_argument(
                "--set",
                dest="overrides",
                action="append",
                default=[],
                metavar="FIELD=VALUE",
                help="override one spec field, e.g. config.train.max_steps=100 (repeatable)",
            )
        if issubclass(model, JobRequest):
            sub.add_argument("job_id")
        if issubclass(model, LogsRequest):
            sub.add_argument("-n", "--lines", type=int, default=LogsRequest.model_fields["lines"].default)
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def request_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The request's fields besides verb and token, from the parsed arguments (submit reads and checks the spec)."""
    if args.verb == "submit":
        tree = json.loads(json.dumps(read_spec_tree(args.spec), default=str))  # YAML dates and the like as strings
        spec_from_tree(
            tree, str(args.spec), args.overrides
        )  # applies the overrides to `tree`; fails here, not remotely
        return {"spec": tree, "origin": str(args.spec)}
    fields = {"job_id": args.job_id} if hasattr(args, "job_id") else {}
    if hasattr(args, "lines"):
        fields["lines"] = args.lines
    return fields


def _format_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def print_list(jobs: list[dict[str, Any]]) -> None:
    if not jobs:
        print("no jobs")
        return
    print(f"{'ID':<10} {'NAME':<16} {'STATE':<10} {'STEP':>8} {'RESTARTS':>8}  {'CREATED':<19}  REASON")
    for j in jobs:
        print(
            f"{j['id']:<10} {(j['name'] or '-'):<16} {j['state']:<10} {j['step']:>8} {j['restarts']:>8}  "
            f"{_format_time(j['created_at']):<19}  {j['reason']}"
        )


def print_status(status: dict[str, Any]) -> None:
    keys = [
        "id",
        "name",
        "state",
        "reason",
        "step",
        "epoch",
        "loss",
        "restarts_total",
        "max_restarts",
        "attempts",
        "newest_checkpoint_step",
        "last_checkpoint_step",
        "last_error",
        "exit_code",
        "run_dir",
        "run_id",
        "continues",
        "write_error",
        "log_path",
    ]
    for key in keys:
        print(f"{key + ':':<24}{status.get(key)}")
    for key in ("created_at", "started_at", "finished_at"):
        print(f"{key + ':':<24}{_format_time(status.get(key))}")
    for rank, info in status.get("ranks", {}).items():
        print(f"{'rank ' + rank + ':':<24}step {info['step']}, state {info['state'] or '-'}")


def print_result(verb: str, result: Any) -> None:
    if verb == "submit":
        print(f"{result['id']} {result['state']}")
    elif verb == "list":
        print_list(result["jobs"])
    elif verb == "status":
        print_status(result)
    elif verb == "logs":
        sys.stdout.write(result["text"])
    elif verb == "ping":
        counts = ", ".join(f"{n} {state}" for state, n in result["jobs"].items() if n) or "no jobs"
        print(f"{result['status']}: up {result['uptime_seconds']:.0f}s, {counts}")
    else:
        requested = f" ({result['requested']} requested)" if "requested" in result else ""
        print(f"{result['id']} {result['state']}{requested}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        token = read_token(args.token_file)
    except AuthError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_USAGE
    client = Client(args.supervisor, token, args.timeout)
    try:
        result = client.call(args.verb, **request_fields(args))
    except ConfigError as err:  # SpecError included
        print(f"{PROG}: {err}\nnothing submitted", file=sys.stderr)
        return EXIT_USAGE
    except SupervisorUnreachable as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except SupervisorError as err:
        print(f"{PROG} {args.subcommand}: the supervisor refused: {err}", file=sys.stderr)
        return EXIT_ERROR_REPLY
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_result(args.verb, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
