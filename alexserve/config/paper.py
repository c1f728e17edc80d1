"""Constants of the paper used outside one field's default, and the rule derived from them."""

from __future__ import annotations

# ILSVRC's classes: fc8's outputs when no data says otherwise (ModelConfig.num_classes left unset).
PAPER_NUM_CLASSES = 1000
# Std (0..255 units) of centred ImageNet training pixels, for a net built without its data measured
# (ModelConfig.pixel_std left unset): the RMS of the per-channel stds (0.229, 0.224, 0.225) of [0, 1] pixels that
# torchvision normalises ImageNet by, times 255. The project measures its own figure on every prepared tree instead
# (data/stats.py, centred on the mean image, which takes slightly more away than the per-channel mean).
IMAGENET_CENTRED_PIXEL_STD = 57.6
PAPER_BIAS_ONE_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")
PAPER_INPUT_SIZE = 224
PAPER_SCALE_SIZE = 256
PAPER_FLIP_PROBABILITY = 0.5
# Below paper size the learning rate ramps up linearly over this many epochs (see OptimConfig.warmup_epochs).
REDUCED_NET_WARMUP_EPOCHS = 1.0


def paper_scale_size(input_size: int) -> int:
    """The stored image side for a crop of `input_size`, at the paper's 256:224 ratio."""
    return round(input_size * PAPER_SCALE_SIZE / PAPER_INPUT_SIZE)
