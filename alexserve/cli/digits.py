"""`alexserve digits DST`: the UCI handwritten digits as an ImageNet-style JPEG tree (library: `alexserve.data.digits`).

    alexserve digits data/digits                       # 64-pixel JPEGs, 80/20 split
    alexserve prepare data/digits data/digits-prepared --scale-size 73

Real images with no download: scikit-learn's 1,797 8x8 scans, drawn as dark ink
on white paper, split per class by the seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alexserve.data.digits import MissingScikitLearn, write_digits


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexserve digits", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dst", type=Path, help="output folder (created)")
    parser.add_argument("--size", type=int, default=64, help="side of the written images in pixels (default 64)")
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="share of every class held out for validation (default 0.2)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.size < 8:
        parser.error(f"--size must be at least 8 (the scans are 8x8), got {args.size}")
    if not 0.0 < args.val_fraction < 1.0:
        parser.error(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    try:
        counts = write_digits(args.dst, size=args.size, val_fraction=args.val_fraction, seed=args.seed)
    except MissingScikitLearn as err:
        print(err, file=sys.stderr)
        return 1
    print(
        f"digits: wrote {counts['train']} training and {counts['val']} validation images to {args.dst}", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
