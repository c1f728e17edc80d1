"""Command-line arguments that more than one command takes, defined once."""

from __future__ import annotations

import argparse

from alexserve.data.imageops import DEFAULT_MAX_IMAGE_PIXELS


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_max_image_pixels(parser: argparse.ArgumentParser) -> None:
    """`--max-image-pixels`: images above it are refused from their header, never decoded (`prepare`, `predict`)."""
    parser.add_argument(
        "--max-image-pixels",
        type=positive_int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="refuse an image whose header gives more pixels, before decoding it "
        f"(default {DEFAULT_MAX_IMAGE_PIXELS:,})",
    )
