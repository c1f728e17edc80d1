"""Constants of the paper used outside one field's default, and the rule derived from them."""

from __future__ import annotations

PAPER_BIAS_ONE_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")
PAPER_INPUT_SIZE = 224
PAPER_SCALE_SIZE = 256
PAPER_FLIP_PROBABILITY = 0.5
# Below paper size the learning rate ramps up linearly over this many epochs (see OptimConfig.warmup_epochs).
REDUCED_NET_WARMUP_EPOCHS = 1.0


def paper_scale_size(input_size: int) -> int:
    """The stored image side for a crop of `input_size`, at the paper's 256:224 ratio."""
    return round(input_size * PAPER_SCALE_SIZE / PAPER_INPUT_SIZE)
