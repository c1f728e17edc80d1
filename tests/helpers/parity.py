"""The small model and batch shared by the parity tests and their rank processes, and the parity comparison."""

from __future__ import annotations

import torch

from alexserve.config import ModelConfig
from alexserve.model import AlexNetTower
from alexserve.parallel.exchange import PeerExchange
from alexserve.parallel.topology import Topology
from helpers.tensors import context

SEED = 3
DROPOUT_SEED = 12345

# Float64 throughout, so the only differences are summation order: 1e-5 relative is far above that noise (about
# 1e-13) and far below any real mistake (a missing half, a swapped tower order, a doubled gradient are all O(1)
# relative).
RTOL = 1e-5


def parity_model_config() -> ModelConfig:
    # Odd class count: exercises the uneven fc8 split (tower 0 holds one class more). A fixed-std init with every
    # bias 1 (not He, whose fc8 starts at 0 and would leave every gradient below fc8 zero at the first step) and a
    # pixel std of 2, so the input division is exercised too.
    return ModelConfig(
        num_classes=7,
        width=0.125,
        input_size=67,
        conv1_padding=2,
        init_scheme="paper",
        init_weight_std=0.05,
        init_bias_one_layers=("conv2", "conv4", "conv5", "fc6", "fc7"),
        input_scaling="unit",
        pixel_std=2.0,
    )


def make_batch(batch: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(99)
    cfg = parity_model_config()
    images = torch.randn(batch, 3, cfg.input_size, cfg.input_size, generator=g, dtype=torch.float64)
    labels = torch.randint(0, cfg.num_classes, (batch,), generator=g)
    return images, labels


def parity_tower(topology: Topology) -> tuple[AlexNetTower, PeerExchange]:
    """This rank's float64 tower of the parity model, initialised as the grouped reference, and its exchange."""
    tower = AlexNetTower(parity_model_config(), topology.tower)
    tower.reset_parameters(SEED)
    return tower.double(), PeerExchange(topology.rank, topology.peer, topology.tower)


def assert_matches_reference(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Every element within RTOL of the largest magnitude in `expected` (max |a - e| / max |e| <= RTOL)."""
    scale = float(expected.abs().max().clamp_min(1e-12))
    reason = f"{what} differs from the single-process reference (tolerance {RTOL} x max|expected| = {RTOL * scale:.3e})"
    torch.testing.assert_close(actual, expected, rtol=0, atol=RTOL * scale, msg=context(reason))
