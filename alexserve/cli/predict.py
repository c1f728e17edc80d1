"""`alexserve predict MODEL IMAGE...`: the top-5 classes of raw images, with probabilities.

Runs the paper's test-time path on images of any size: shorter side to the
training scale, central square, minus the training mean image, ten crops (five,
unmirrored, for a model that trained without flips), the softmax averaged over
them. MODEL is a file written by `alexserve export`; its SHA-256 and contents
are checked first, and a damaged file exits 2 with one line.
An image above --max-image-pixels (read from its header) is refused undecoded.
Library: `alexserve.inference.predict`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alexserve.cli.arguments import add_max_image_pixels
from alexserve.inference.predict import predict_files


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexserve predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path, help="file written by `alexserve export`")
    parser.add_argument("images", type=Path, nargs="+")
    add_max_image_pixels(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        results = predict_files(args.model, args.images, max_pixels=args.max_image_pixels)
    except ValueError as err:  # ExportError is one: not an export, or no mean image; or an unreadable image
        print(f"alexserve predict: {err}", file=sys.stderr)
        return 2
    for path, ranked in zip(args.images, results):
        print(path)
        for ranked_class in ranked:
            print(f"  {ranked_class.probability:6.1%}  {ranked_class.label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
