"""`JobConfig`: one training job's sections, what depends on several of them, and the embedded demo."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from alexserve.config.data import DataConfig
from alexserve.config.dist import DistConfig
from alexserve.config.model import ModelConfig
from alexserve.config.optim import OptimConfig
from alexserve.config.paper import REDUCED_NET_WARMUP_EPOCHS
from alexserve.config.strict_model import StrictModel
from alexserve.config.train import TrainConfig


class JobConfig(StrictModel):
    """Everything one training job needs."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    dist: DistConfig = Field(default_factory=DistConfig)

    @property
    def warmup_epochs_used(self) -> float:
        if self.optim.warmup_epochs is not None:
            return self.optim.warmup_epochs
        return 0.0 if self.model.paper_sized else REDUCED_NET_WARMUP_EPOCHS

    @property
    def lr_epoch_budget(self) -> int | None:
        """The epochs the schedule must fit its reductions into (optim.reductions_within_budget), or None."""
        within = self.optim.reductions_within_budget
        if within is None:
            within = not self.model.paper_sized
        return self.train.num_epochs if within else None


def demo_config() -> JobConfig:
    """The embedded default: small, learnable, about a minute on two CPU cores.

    It trains on a 10-class `alexserve synth` dataset, prepared at the paper's 256:224
    ratio for a 64-pixel crop, which the worker makes on first use (data/demo_data.py).
    It sets only what a user sets (data, width, input size, batch, epochs): what a
    quarter-width net needs beyond the paper is chosen by the 'auto' fields.
    """
    return JobConfig(
        model=ModelConfig(width=0.25, input_size=64),
        data=DataConfig(source="folder", train_dir=Path("runs/demo/data/train")),
        train=TrainConfig(batch_size=64, num_epochs=4, log_every_steps=8, run_dir=Path("runs/demo")),
    )
