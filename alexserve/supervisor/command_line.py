"""`alexserve supervisor`: job control over ZeroMQ, worker groups under torchrun, Prometheus /metrics.

    alexserve supervisor --state-dir ~/.alexserve                 # control tcp://127.0.0.1:7355, metrics :7356
    alexserve supervisor --runs-root /data/runs                   # job folders (default: STATE_DIR/runs)
    alexserve job submit job.yaml && alexserve job list
    curl -s 127.0.0.1:7356/metrics | grep alexserve_train_images_total

    # reachable from other hosts: a token is required (file or ALEXSERVE_TOKEN)
    alexserve supervisor --control tcp://0.0.0.0:7355 --metrics-host 0.0.0.0 --token-file /run/secrets/alexserve_token

Runs until SIGTERM or SIGINT, then stops its running jobs with a checkpoint (`--stop-grace-seconds`),
kills what is left and records why.
Library: `alexserve.supervisor.service.Supervisor`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import zmq

from alexserve.contract.names import ENV_STATE_DIR, ENV_SUPERVISOR
from alexserve.supervisor.auth import AuthError, check_binds, read_token
from alexserve.supervisor.control_messages import DEFAULT_CONTROL_ADDR, DEFAULT_METRICS_PORT
from alexserve.supervisor.options import ServerOptions
from alexserve.supervisor.process import WORKER_MODULE
from alexserve.supervisor.service import Supervisor

PROG = "alexserve supervisor"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get(ENV_STATE_DIR, Path.home() / ".alexserve")),
        help=f"job records, configs and logs (default: ${ENV_STATE_DIR} or ~/.alexserve)",
    )
    add(
        "--runs-root",
        type=Path,
        help="every job's run dir lives below it; specs name folders relative to it (default: STATE_DIR/runs)",
    )
    add(
        "--control",
        default=os.environ.get(ENV_SUPERVISOR, DEFAULT_CONTROL_ADDR),
        help=f"ZeroMQ endpoint of the control socket (default: ${ENV_SUPERVISOR} or {DEFAULT_CONTROL_ADDR})",
    )
    add("--metrics-host", default="127.0.0.1", help="address of the /metrics and /healthz endpoint")
    add(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help="port of /metrics and /healthz (0: any free port)",
    )
    add(
        "--token-file",
        type=Path,
        help="file holding the auth token (else $ALEXSERVE_TOKEN); needed for non-loopback binds",
    )
    add(
        "--metrics-public",
        action="store_true",
        help="serve /metrics without the token even on a non-loopback address (e.g. inside a private compose network)",
    )
    add("--max-running", type=int, default=1, help="worker groups running at once; other jobs wait queued")
    add("--stop-timeout", type=float, default=300.0, help="seconds a stopping job may take before it is killed")
    add(
        "--stop-grace-seconds",
        type=float,
        default=120.0,
        help="on SIGTERM/SIGINT, seconds running jobs get to checkpoint and stop (recorded `stopped`, resumable) "
        "before the rest are killed (0: kill at once)",
    )
    add("--restart-delay", type=float, default=1.0, help="seconds between a worker death and the relaunch")
    add("--worker-module", default=WORKER_MODULE, help=argparse.SUPPRESS)  # tests run a stand-in
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def options_from_args(args: argparse.Namespace, token: str | None) -> ServerOptions:
    return ServerOptions(
        state_dir=args.state_dir.expanduser(),
        runs_root=args.runs_root.expanduser() if args.runs_root is not None else None,
        control_addr=args.control,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        token=token,
        metrics_public=args.metrics_public,
        max_running=args.max_running,
        stop_timeout_seconds=args.stop_timeout,
        stop_grace_seconds=args.stop_grace_seconds,
        restart_delay_seconds=args.restart_delay,
        worker_module=args.worker_module,
    )


def log_to_stderr() -> logging.Logger:
    """`[alexserve supervisor] HH:MM:SS message` lines on stderr for everything under alexserve.supervisor."""
    logger = logging.getLogger("alexserve.supervisor")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[alexserve supervisor] %(asctime)s %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        token = read_token(args.token_file)
        check_binds(args.control, args.metrics_host, token)
    except AuthError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    if args.max_running < 1:
        print(f"{PROG}: --max-running must be at least 1", file=sys.stderr)
        return 2
    log = log_to_stderr()
    supervisor = Supervisor(options_from_args(args, token))
    try:
        supervisor.start()
    except (RuntimeError, OSError, zmq.ZMQError) as err:
        print(f"{PROG}: cannot start: {err}", file=sys.stderr)
        supervisor.close()
        return 1
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    supervisor.serve_forever()
    log.info("shut down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
