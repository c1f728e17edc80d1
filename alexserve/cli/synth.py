"""`alexserve synth DST`: a learnable ImageNet-like JPEG dataset (library: `alexserve.data.synth`).

    alexserve synth data/synth --classes 10 --train-per-class 260 --val-per-class 50
    alexserve prepare data/synth data/synth-prepared

Each class is a striped texture with its own hue, angle and period; `--variant`
keeps the textures and changes only the pixel statistics.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alexserve.data.synth import VARIANTS, generate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexserve synth", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dst", type=Path, help="output folder (created)")
    parser.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    parser.add_argument("--train-per-class", type=int, default=260, help="training images per class (default 260)")
    parser.add_argument("--val-per-class", type=int, default=50, help="validation images per class (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same pixels (default 0)")
    parser.add_argument("--min-side", type=int, default=96, help="smallest shorter side in pixels (default 96)")
    parser.add_argument("--max-side", type=int, default=320, help="largest shorter side in pixels (default 320)")
    parser.add_argument(
        "--val-layout",
        choices=("flat", "folders"),
        default="flat",
        help="ILSVRC-style flat val + labels file, or class folders",
    )
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    parser.add_argument(
        "--variant",
        choices=tuple(VARIANTS),
        default="standard",
        help="pixel statistics: the same textures, standard, low-contrast, grayscale, dark or bright "
        "(default standard)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.classes < 1 or args.train_per_class < 1 or args.val_per_class < 0:
        parser.error("--classes and --train-per-class must be >= 1, --val-per-class >= 0")
    if not 1 <= args.min_side <= args.max_side:
        parser.error(f"need 1 <= --min-side <= --max-side, got {args.min_side} and {args.max_side}")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    generate(
        args.dst,
        num_classes=args.classes,
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
        seed=args.seed,
        min_side=args.min_side,
        max_side=args.max_side,
        val_layout=args.val_layout,
        quality=args.quality,
        variant=args.variant,
    )
    total = args.classes * (args.train_per_class + args.val_per_class)
    print(f"synth: wrote {total} {args.variant} images in {args.classes} classes to {args.dst}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
