"""`TrainConfig`: the training run itself (batch, epochs, precision, where its files go)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from alexserve.config.limits import MAX_BATCH_SIZE, MAX_STEPS
from alexserve.config.strict_model import StrictModel


class TrainConfig(StrictModel):
    """The training run itself."""

    batch_size: int = Field(
        128,
        ge=1,
        le=MAX_BATCH_SIZE,
        description=f"Images per step, seen by both towers (paper: 128); at most {MAX_BATCH_SIZE}.",
    )
    num_epochs: int = Field(
        90, ge=1, le=100_000, description="Passes over the training set (paper: about 90); at most 100,000."
    )
    max_steps: int | None = Field(
        None, ge=1, le=MAX_STEPS, description="Stop after this many steps (for demos and tests); None runs all epochs."
    )
    seed: int = Field(
        0, ge=0, le=2**63 - 1, description="Seeds weights, data order, augmentation and dropout (0 .. 2^63-1)."
    )
    log_every_steps: int = Field(10, ge=1, le=MAX_STEPS, description="Steps per progress line.")
    dtype: Literal["float32", "float64"] = Field(
        "float32", description="Parameter and activation dtype (float64 for exactness tests)."
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="'fp32': compute in train.dtype. 'bf16': forward and loss under bfloat16 autocast (convolutions, "
        "matmuls and the exchanges in bf16; parameters, loss and the optimizer in fp32); needs train.dtype float32.",
    )
    channels_last: bool = Field(
        False, description="Conv weights and input in channels-last memory order (faster cuDNN kernels on GPUs)."
    )
    allow_tf32: bool = Field(
        True,
        description="On CUDA, fp32 convolutions and matmuls may use TF32 tensor cores; false asks for IEEE fp32.",
    )
    run_dir: Path = Field(Path("runs/default"), description="Where history, plots and checkpoints of this job go.")
    checkpoint_dir: Path | None = Field(None, description="Checkpoint folder; None means run_dir/checkpoints.")
    checkpoint_every_steps: int | None = Field(
        None, ge=1, le=MAX_STEPS, description="Also checkpoint every this many steps (every epoch end always)."
    )
    keep_last_checkpoints: int = Field(
        3, ge=1, le=1000, description="Committed checkpoints kept; older ones are deleted. At most 1000."
    )
    ten_crop_every_epochs: int = Field(
        1, ge=1, le=100_000, description="Evaluate ten crops every this many epochs (centre crop: every epoch)."
    )
    divergence_loss_factor: float = Field(
        10.0,
        gt=1.0,
        le=1e6,
        description="Training stops as diverged (exit code 4, no checkpoint) at a step whose loss is over this many "
        "times "
        "the start: max(ln(num_classes), the first step's loss). A loss that is not finite always stops it.",
    )

    @model_validator(mode="after")
    def _bf16_needs_float32(self) -> TrainConfig:
        if self.precision == "bf16" and self.dtype != "float32":
            raise ValueError(f"precision bf16 autocasts float32 parameters; train.dtype is {self.dtype}")
        return self

    @property
    def checkpoints(self) -> Path:
        return self.checkpoint_dir if self.checkpoint_dir is not None else self.run_dir / "checkpoints"
