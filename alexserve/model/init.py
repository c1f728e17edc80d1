"""The paper's initialisation, drawn per tower so both model forms start identical.

Weights ~ N(0, std^2) (or He's N(0, 2/fan_in) with init_scheme 'he'); biases 1
in the layers the config lists (conv2, conv4, conv5, fc6, fc7 in the paper at
paper size), 0 elsewhere. Each tower draws from its own
generator seeded by (seed, tower), so a tower process needs nothing from its
peer to start, and the grouped model is the concatenation of the same draws.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from alexserve.config import ModelConfig
from alexserve.model.tower_split import LAYER_NAMES


def tower_generator(seed: int, tower: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed * 2 + tower)
    return generator


def weight_std(cfg: ModelConfig, name: str, weight: torch.Tensor) -> float:
    if cfg.init_scheme_used == "paper":
        return cfg.init_weight_std
    if name == "fc8":
        # He keeps the signal's scale up to fc8, so He-scaled logits would start as large as that signal
        # (loss ~10 for 10 classes): fc8 starts at 0, the first prediction is uniform and the first loss ln(classes).
        return 0.0
    fan_in = weight[0].numel()
    gain = 2.0  # ReLU after every layer but fc8
    # He assumes unit-variance inputs; raw pixels have the data's std instead.
    raw_pixels = name == "conv1" and cfg.input_scaling_used == "raw" and cfg.pixel_std is not None
    return math.sqrt(gain / fan_in) / (cfg.pixel_std if raw_pixels else 1.0)


@torch.no_grad()
def init_tower_(module: nn.Module, cfg: ModelConfig, tower: int, seed: int) -> None:
    """Initialise a tower's layers in place; draws happen on the CPU in float64, then cast,
    so the values do not depend on the device or dtype the tower lives on."""
    generator = tower_generator(seed, tower)
    for name in LAYER_NAMES:
        layer = getattr(module, name)
        weight = torch.empty(layer.weight.shape, dtype=torch.float64).normal_(
            0.0, weight_std(cfg, name, layer.weight), generator=generator
        )
        layer.weight.copy_(weight)
        layer.bias.fill_(1.0 if name in cfg.bias_one_layers_used else 0.0)
