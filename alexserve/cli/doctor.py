"""`alexserve doctor`: check a new host before the first job; a table of pass / fail / skip, exit 1 on any fail.

On a GPU host: the GPUs seen, NCCL send/recv between GPU 0 and 1, DALI's GPU
decode, one two-tower step against the grouped model, a 20-step throughput
figure. On CPU: the same on gloo and DALI's CPU path. Library: `alexserve.doctor`.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexserve doctor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="'auto': GPU checks where there are GPUs; 'cpu': the CPU subset; 'cuda': fail without GPUs",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps of the throughput figure (default 20)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds the two tower processes may take")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 1:
        print("alexserve doctor: --steps must be at least 1", file=sys.stderr)
        return 2
    from alexserve.doctor.checks import host_line, run_checks
    from alexserve.doctor.report import exit_code, format_table

    print(f"alexserve doctor: {host_line()}", flush=True)
    results = run_checks(args.device, args.steps, args.timeout)
    print(format_table(results))
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
