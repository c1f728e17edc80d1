"""`alexserve eval MODEL --data PREPARED`: top-1/top-5 error, centre crop and ten crops.

A model that trained without flips (its data's mirror check turned them off) is
tested on the five unmirrored crops of the ten, as it was during training.

MODEL is an exported file (`alexserve export`) or a checkpoint (folder or
checkpoint directory). Runs the grouped model in one process (GPU if present).
Library: `alexserve.inference.error_rates`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alexserve.checkpoint.store import CheckpointError
from alexserve.data.prepared_tree import DatasetError
from alexserve.inference.error_rates import measure_error_rates
from alexserve.model.exported import ExportError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexserve eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path, help="exported model file or checkpoint")
    parser.add_argument("--data", type=Path, required=True, help="prepared tree (made by `alexserve prepare`)")
    parser.add_argument("--split", default="val", choices=["val", "train"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--loader", default="dali", choices=["dali", "pil"])
    parser.add_argument("--workers", type=int, default=2)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        results = measure_error_rates(
            args.model,
            args.data,
            split=args.split,
            batch_size=args.batch_size,
            loader=args.loader,
            num_workers=args.workers,
        )
    except (ExportError, CheckpointError, DatasetError) as err:
        print(f"alexserve eval: {err}", file=sys.stderr)
        return 2
    for result in results:
        print(
            f"{result.mode.replace('_', '-'):>8}: top-1 error {result.top1_error:.4f}  "
            f"top-5 error {result.top5_error:.4f}  ({result.images} images)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
