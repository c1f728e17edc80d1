"""Dropout whose mask is a pure function of (seed, step, layer), shared by both towers.

The single-process model drops units of the full 4096-wide fc6/fc7 output; a
tower owns half of those units. For the two forms to agree exactly, every
process draws the mask of the *full* layer from a generator seeded by
`dropout_seed(base, data-parallel rank, step, layer)` and keeps its own columns.
Drawing twice the needed randoms is cheap next to the layer itself, and it
means no RNG state has to be saved for an exact resume.
"""

from __future__ import annotations

import torch

_LAYER_IDS = {"fc6": 6, "fc7": 7}
_MASK64 = (1 << 63) - 1


def dropout_seed(base_seed: int, dp_rank: int, step: int) -> int:
    """One seed per step and data-parallel rank (pairs must not share masks: they see different images)."""
    mixed = (base_seed * 0x9E3779B97F4A7C15 + dp_rank * 0xBF58476D1CE4E5B9 + step * 0x94D049BB133111EB) & _MASK64
    return mixed or 1


def shared_dropout(
    h: torch.Tensor, p: float, seed: int, layer: str, full_width: int, column_offset: int
) -> torch.Tensor:
    """Inverted dropout on `h` ([B, width]), which holds columns `column_offset..` of a `full_width` layer."""
    if p == 0.0:
        return h
    generator = torch.Generator(device=h.device)
    generator.manual_seed((seed + _LAYER_IDS[layer]) & _MASK64)
    keep = torch.rand((h.shape[0], full_width), generator=generator, device=h.device) >= p
    keep = keep[:, column_offset : column_offset + h.shape[1]]
    return h * keep.to(h.dtype) * (1.0 / (1.0 - p))
