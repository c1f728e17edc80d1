"""The one parameter layout shared by the towers and the single-process model.

Both forms use the same parameter names (conv1..conv5, fc6..fc8, `.weight` and
`.bias`). Every layer is split between the towers along its *output* dimension,
so each grouped tensor is exactly `cat([tower0, tower1], dim=0)`:

- conv1/conv2/conv4/conv5: tower t owns output maps [t*C, (t+1)*C); conv2, 4, 5
  are `groups=2` in the grouped form, whose group t reads tower t's maps.
- conv3, fc6, fc7: tower t owns half the outputs and reads *all* inputs, ordered
  tower 0's then tower 1's (this is why the exchange concatenates in tower order).
- fc8: tower 0 owns the first ceil(n/2) classes, tower 1 the rest.

A checkpoint of either form therefore loads into the other with one concat or split.
"""

from __future__ import annotations

import torch

from alexserve.config import ModelConfig

LAYER_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


def tower_split_sizes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """Rows each tower owns, per layer."""
    sizes = {f"conv{i + 1}": (c, c) for i, c in enumerate(cfg.conv_channels)}
    sizes["fc6"] = sizes["fc7"] = (cfg.fc_neurons, cfg.fc_neurons)
    sizes["fc8"] = cfg.classes_per_tower
    return sizes


def _layer_of(name: str) -> str:
    layer = name.split(".", 1)[0]
    if layer not in LAYER_NAMES:
        raise KeyError(f"parameter {name!r} does not belong to a known layer {LAYER_NAMES}")
    return layer


def join_tower_states(cfg: ModelConfig, tower_states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Tower 0 and tower 1 state dicts -> the grouped model's state dict."""
    if len(tower_states) != 2:
        raise ValueError(f"need exactly two tower states, got {len(tower_states)}")
    first, second = tower_states
    if first.keys() != second.keys():
        raise KeyError(f"tower states differ in keys: {sorted(first.keys() ^ second.keys())}")
    return {name: torch.cat([first[name], second[name]], dim=0) for name in first}


def split_grouped_state(cfg: ModelConfig, grouped: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The grouped model's state dict -> [tower 0 state, tower 1 state]."""
    sizes = tower_split_sizes(cfg)
    towers: list[dict[str, torch.Tensor]] = [{}, {}]
    for name, tensor in grouped.items():
        rows = sizes[_layer_of(name)]
        if tensor.shape[0] != sum(rows):
            raise ValueError(f"{name}: {tensor.shape[0]} rows, expected {sum(rows)} for this model config")
        for t, part in enumerate(torch.split(tensor, list(rows), dim=0)):
            towers[t][name] = part.clone()
    return towers
