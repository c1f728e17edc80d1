"""The UCI handwritten digits as an ImageNet-style JPEG tree (`alexserve digits`).

A small set of *real* images that nobody here made: scikit-learn ships the
1,797 8x8 scans (`sklearn.datasets.load_digits`, no download). Each is drawn as
dark ink on white paper, upsampled to `size` pixels and written as
`DST/train/<digit>/*.JPEG` and `DST/val/<digit>/*.JPEG`, with
`DST/synset_words.txt` naming the classes. The split is stratified and fixed by
the seed, so every tool that uses it (tests, `bench.learning`, a user) sees the
same images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DIGITS_INK_LEVELS = 16  # the UCI scans count ink in 0..16


class MissingScikitLearn(ImportError):
    """scikit-learn, which ships the scans, is not installed; the message says how to install it."""


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """([1797, 8, 8] ink 0..16, [1797] labels); scikit-learn is an optional dependency.

    Raises `MissingScikitLearn` (an ImportError) saying what to install when it is not there.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise MissingScikitLearn(
            f"alexserve digits needs scikit-learn ({err}); pip install 'alexserve[test]' or scikit-learn"
        ) from None
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


def write_digits(
    dst: Path, *, size: int = 64, val_fraction: float = 0.2, seed: int = 0, quality: int = 95
) -> dict[str, int]:
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
