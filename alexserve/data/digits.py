"""`alexserve digits DST`: the UCI handwritten digits as an ImageNet-style JPEG tree.

    alexserve digits data/digits                       # 64-pixel JPEGs, 80/20 split
    alexserve prepare data/digits data/digits-prepared --scale-size 73

A small set of *real* images that nobody here made: scikit-learn ships the
1,797 8x8 scans (`sklearn.datasets.load_digits`, no download). Each is drawn as
dark ink on white paper, upsampled to `size` pixels and written as
`DST/train/<digit>/*.JPEG` and `DST/val/<digit>/*.JPEG`, with
`DST/synset_words.txt` naming the classes. The split is stratified and fixed by
the seed, so every tool that uses it (tests, `bench.learning`, a user) sees the
same images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

DIGITS_INK_LEVELS = 16  # the UCI scans count ink in 0..16


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """([1797, 8, 8] ink 0..16, [1797] labels); scikit-learn is an optional dependency."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise SystemExit(f"alexserve digits needs scikit-learn ({err}); pip install 'alexserve[test]' or scikit-learn") from None
    digits = load_digits()
    return digits.images, digits.target


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation images: `val_fraction` of every class, drawn by the seed."""
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        is_val[members[: round(len(members) * val_fraction)]] = True
    return is_val


def render(ink: np.ndarray, size: int) -> Image.Image:
    paper = (255.0 * (1.0 - ink / DIGITS_INK_LEVELS)).astype(np.uint8)
    return Image.fromarray(paper, mode="L").resize((size, size), Image.BILINEAR).convert("RGB")


def write_digits(dst: Path, *, size: int = 64, val_fraction: float = 0.2, seed: int = 0, quality: int = 95) -> dict[str, int]:
    """Write the tree under `dst`; returns the number of images per split."""
    images, labels = load_digits_arrays()
    is_val = stratified_split(labels, val_fraction, seed)
    counts = {"train": 0, "val": 0}
    for index, (ink, label) in enumerate(zip(images, labels)):
        split = "val" if is_val[index] else "train"
        path = Path(dst) / split / str(label) / f"digit_{index:04d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        render(ink, size).save(path, "JPEG", quality=quality)
        counts[split] += 1
    (Path(dst) / "synset_words.txt").write_text("".join(f"{d} digit {d}\n" for d in range(10)))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alexserve digits", description=__doc__.split("\n\n")[0])
    parser.add_argument("dst", type=Path, help="output folder (created)")
    parser.add_argument("--size", type=int, default=64, help="side of the written images in pixels (default 64)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of every class held out for validation (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    args = parser.parse_args(argv)
    if args.size < 8:
        parser.error(f"--size must be at least 8 (the scans are 8x8), got {args.size}")
    if not 0.0 < args.val_fraction < 1.0:
        parser.error(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    counts = write_digits(args.dst, size=args.size, val_fraction=args.val_fraction, seed=args.seed)
    print(f"digits: wrote {counts['train']} training and {counts['val']} validation images to {args.dst}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
