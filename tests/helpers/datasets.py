"""Shared helpers for the data tests.

`tiny_prepared_tree()` builds one small synth dataset with every kind of bad file,
prepares it once per test process, and returns the paths: a few seconds on 2 cores.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from alexserve.config import DataConfig, JobConfig, ModelConfig, TrainConfig
from alexserve.data.prepare import prepare
from alexserve.data.synth import generate

NUM_CLASSES = 4
TRAIN_PER_CLASS = 10
VAL_PER_CLASS = 3


def write_bad_files(folder: Path) -> dict[str, str]:
    """Every kind of bad input ImageNet has, named .JPEG; returns file name -> expected reason fragment."""
    rng = np.random.default_rng(7)
    pixels = (rng.random((60, 90, 3)) * 255).astype(np.uint8)
    (folder / "zero.JPEG").write_bytes(b"")
    good = folder / "tmp_good.jpg"
    Image.fromarray(pixels).save(good, "JPEG", quality=90)
    data = good.read_bytes()
    good.unlink()
    (folder / "truncated.JPEG").write_bytes(data[: len(data) // 2])
    (folder / "text.JPEG").write_text("<html>this is not an image</html>\n")
    Image.fromarray(pixels).save(folder / "png.JPEG", "PNG")
    Image.fromarray(pixels).convert("CMYK").save(folder / "cmyk.JPEG", "JPEG")
    Image.fromarray(pixels).convert("L").save(folder / "gray.JPEG", "JPEG")
    Image.fromarray(pixels).convert("RGBA").save(folder / "rgba.JPEG", "PNG")
    return {
        "zero.JPEG": "zero-byte",
        "truncated.JPEG": "truncated",
        "text.JPEG": "not an image",
        "png.JPEG": "PNG data",
        "cmyk.JPEG": "CMYK",
        "gray.JPEG": "grayscale",
        "rgba.JPEG": "RGBA",
    }


@functools.cache
def tiny_prepared_tree() -> tuple[Path, Path, dict[str, str]]:
    """(synth SRC, prepared DST, bad-file expectations); built once per process."""
    root = Path(tempfile.mkdtemp(prefix="alexserve-data-test-"))
    atexit.register(shutil.rmtree, root, True)
    src, dst = root / "src", root / "dst"
    generate(
        src,
        num_classes=NUM_CLASSES,
        train_per_class=TRAIN_PER_CLASS,
        val_per_class=VAL_PER_CLASS,
        seed=3,
        min_side=48,
        max_side=160,
    )
    bad = write_bad_files(next(p for p in sorted((src / "train").iterdir())))
    prepare(src, dst, scale_size=256, workers=2)
    return src, dst, bad


def folder_job(
    dst: Path, *, loader: str = "dali", batch_size: int = 4, input_size: int = 224, seed: int = 0, **data
) -> JobConfig:
    return JobConfig(
        model=ModelConfig(num_classes=NUM_CLASSES, input_size=input_size),
        data=DataConfig(source="folder", train_dir=dst / "train", loader=loader, num_workers=1, **data),
        train=TrainConfig(batch_size=batch_size, seed=seed),
    )


def checksum(batch: torch.Tensor) -> str:
    """SHA-256 of a batch's bytes: equal batches, equal strings, in any process."""
    return hashlib.sha256(batch.contiguous().numpy().tobytes()).hexdigest()
