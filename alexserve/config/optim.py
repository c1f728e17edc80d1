"""`OptimConfig`: the paper's SGD and learning-rate schedule."""

from __future__ import annotations

from pydantic import Field

from alexserve.config.paper import REDUCED_NET_WARMUP_EPOCHS
from alexserve.config.strict_model import StrictModel


class OptimConfig(StrictModel):
    """The paper's SGD and learning-rate schedule."""

    learning_rate: float = Field(
        0.01,
        gt=0.0,
        le=1000.0,
        description="Initial learning rate for every layer (paper: 0.01); finite, at most 1000.",
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="Momentum (paper: 0.9).")
    weight_decay: float = Field(
        5e-4, ge=0.0, le=1.0, description="Weight decay (paper: 0.0005), applied as in the paper's update rule."
    )
    lr_divisor: float = Field(
        10.0,
        gt=1.0,
        le=1e6,
        description="The learning rate is divided by this when validation error plateaus (paper: 10).",
    )
    plateau_patience: int = Field(
        3,
        ge=1,
        le=1000,
        description="Epochs in a row without a real improvement of the validation error before the learning rate "
        "drops.",
    )
    plateau_min_relative_improvement: float = Field(
        0.02,
        ge=0.0,
        lt=1.0,
        description="An epoch improves only if its validation error is below best * (1 - this): "
        "a lower error by a hair (one or two images of noise) does not reset the patience.",
    )
    warmup_epochs: float | None = Field(
        None,
        ge=0.0,
        le=1000.0,
        description="The learning rate ramps up linearly from 0 over this many epochs. None: 0 at paper size, "
        f"{REDUCED_NET_WARMUP_EPOCHS:g} below (a departure: a He-initialised narrow net takes steps too large at "
        "first).",
    )
    max_lr_reductions: int = Field(
        3, ge=0, le=20, description="Reductions before training stops (paper: three); at most 20."
    )
    reductions_within_budget: bool | None = Field(
        None,
        description="When the epochs left in train.num_epochs are no more than the reductions still due, the rate "
        "is divided as if on a plateau, once the current rate has run plateau_patience epochs, so a run too short "
        "for its plateaus still ends at a reduced rate rather than at the first, noisiest one. None: off at paper "
        "size (the paper's plateau rule alone), on below (a departure).",
    )
