"""Step time of one tower pair against two pairs (data parallel) at the same per-pair batch.

    python -m alexserve.bench.data_parallel [--width 0.25 --batch-size 32 --steps 6]

Both layouts run in one invocation, one after the other, on this machine: with
two pairs, four processes share the cores, so on a 2-core CPU the ratio mostly
shows the cost of sharing cores plus the all-reduce; the all-reduce's share is
the part of each step spent blocked waiting for averaged gradients (the rest
of it overlaps the backward pass).
"""

from __future__ import annotations

import json
import os
import statistics
import sys

import torch

from alexserve.bench.pair import parse_args, run_pair, strip_out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    print(
        f"model width {args.width}, input {args.input_size}, per-pair batch {args.batch_size}, "
        f"{args.steps} timed steps, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}",
        flush=True,
    )
    results = {pairs: run_pair(args, strip_out(argv), world_size=2 * pairs) for pairs in (1, 2)}
    figures = {}
    for pairs, result in results.items():
        median = statistics.median(result["times"])
        allreduce_share = result["allreduce_wait_seconds"] / sum(result["times"])
        exchange_share = sum(e["seconds"] for e in result["exchange"].values()) / sum(result["times"])
        figures[pairs] = {
            "step_seconds_median": median,
            "images_per_second": pairs * args.batch_size / median,
            "allreduce_wait_share": allreduce_share,
            "exchange_share": exchange_share,
        }
        print(
            f"{pairs} pair(s), {2 * pairs} processes: {median * 1e3:.1f} ms/step, "
            f"{figures[pairs]['images_per_second']:.1f} img/s, "
            f"exchange {exchange_share:.1%}, all-reduce wait {allreduce_share:.1%}"
        )
    ratio = figures[2]["step_seconds_median"] / figures[1]["step_seconds_median"]
    print(
        f"2 pairs / 1 pair step time: {ratio:.2f}x; throughput 2 pairs / 1 pair: "
        f"{figures[2]['images_per_second'] / figures[1]['images_per_second']:.2f}x"
    )
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
