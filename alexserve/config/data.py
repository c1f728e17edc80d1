"""`DataConfig`: where images come from, and the paper's augmentation."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from alexserve.config.limits import MAX_GENERATED_IMAGES, MAX_INPUT_SIZE, MAX_LOADER_WORKERS
from alexserve.config.paper import PAPER_FLIP_PROBABILITY
from alexserve.config.strict_model import StrictModel


class DataConfig(StrictModel):
    """Where images come from and the paper's augmentation."""

    source: Literal["generated", "folder"] = Field(
        "generated",
        description="'generated': in-memory learnable tensors (demo, tests); 'folder': a tree made by `alexserve "
        "prepare` or `alexserve synth`.",
    )
    train_dir: Path | None = Field(
        None, description="Prepared training tree (one folder per class), with its stats file."
    )
    val_dir: Path | None = Field(
        None, description="Prepared validation tree (one folder per class); None: the 'val' folder beside train_dir."
    )
    stats_path: Path | None = Field(
        None,
        description="Mean image and RGB PCA written by `alexserve prepare` (stats.npz); None: the one beside "
        "train_dir.",
    )
    loader: Literal["dali", "pil"] = Field(
        "dali", description="'dali' (the paper's path on NVIDIA DALI) or 'pil' (PIL + torch DataLoader peer)."
    )
    num_workers: int = Field(
        2,
        ge=0,
        le=MAX_LOADER_WORKERS,
        description=f"Decode/augment threads (DALI) or processes (PIL) per rank; at most {MAX_LOADER_WORKERS}.",
    )
    prefetch_batches: int = Field(2, ge=1, le=16, description="Batches prepared ahead of the one training; at most 16.")
    scale_size: int | None = Field(
        None,
        ge=1,
        le=2 * MAX_INPUT_SIZE,
        description="Shorter side after rescale and side of the central square kept (paper: "
        "256); None: the prepared tree's (stats.npz), or the paper's 256:224 ratio to model.input_size for generated "
        "data. "
        f"At most {2 * MAX_INPUT_SIZE}.",
    )
    flip_probability: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description=f"Chance of a horizontal reflection (paper: {PAPER_FLIP_PROBABILITY:g}); 0 also leaves the "
        "mirrored patches out of the ten-crop test. None: the paper's, unless the prepared tree's mirror check "
        "(data/mirror_check.py) shows that mirroring loses the class (a mirrored digit is no digit): then 0.",
    )
    pca_lighting_std: float = Field(
        0.1,
        ge=0.0,
        le=10.0,
        description="Std of the per-image, per-component PCA lighting coefficient (paper: 0.1); at most 10.",
    )
    generated_train_images: int = Field(
        2048,
        ge=1,
        le=MAX_GENERATED_IMAGES,
        description=f"Images in the generated training set, held in memory; at most {MAX_GENERATED_IMAGES:,}.",
    )
    generated_val_images: int = Field(
        512,
        ge=1,
        le=MAX_GENERATED_IMAGES,
        description=f"Images in the generated validation set, held in memory; at most {MAX_GENERATED_IMAGES:,}.",
    )

    @property
    def flip_probability_used(self) -> float:
        return PAPER_FLIP_PROBABILITY if self.flip_probability is None else self.flip_probability

    @property
    def test_time_mirrors(self) -> bool:
        """Whether the ten-crop test averages the mirrored patches too: only for a net that trained on mirrors."""
        return self.flip_probability_used > 0.0

    @model_validator(mode="after")
    def _check_source(self) -> DataConfig:
        if self.source == "folder" and self.train_dir is None:
            raise ValueError("source 'folder' needs train_dir")
        return self
