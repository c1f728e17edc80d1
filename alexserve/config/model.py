"""`ModelConfig`: the network of the paper's figure 2, split into two towers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from alexserve.config.limits import (
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_FC_NEURONS,
    MAX_INPUT_SIZE,
    MAX_KERNEL_SIDE,
    ChannelCount,
    KernelSide,
)
from alexserve.config.paper import (
    IMAGENET_CENTRED_PIXEL_STD,
    PAPER_BIAS_ONE_LAYERS,
    PAPER_INPUT_SIZE,
    PAPER_NUM_CLASSES,
)
from alexserve.config.strict_model import StrictModel


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class ModelConfig(StrictModel):
    """The network of the paper's figure 2, split into two towers."""

    num_classes: int | None = Field(
        None,
        ge=2,
        le=MAX_CLASSES,
        description="Classes of the softmax (fc8 outputs, split across the towers); None: a job takes the prepared "
        f"tree's classes.json (generated data: 10), and a net built from the bare config has the paper's "
        f"{PAPER_NUM_CLASSES}. At most {MAX_CLASSES:,} (ImageNet-21k has 21,841).",
    )
    width: float = Field(
        1.0, gt=0.0, le=4.0, description="Multiplier on every layer's kernel and neuron count; 1.0 is the paper."
    )
    input_size: int = Field(
        224,
        ge=1,
        le=MAX_INPUT_SIZE,
        description="Side of the square input crop (224 in the paper; 227 with conv1_padding 0 is Caffe's choice); at "
        f"most {MAX_INPUT_SIZE}.",
    )
    conv1_padding: int = Field(
        2,
        ge=0,
        le=5,
        description="Zero padding of conv1; 2 makes a 224 input give 55x55 like the paper's 227-equivalent.",
    )
    tower_conv_channels: tuple[ChannelCount, ChannelCount, ChannelCount, ChannelCount, ChannelCount] = Field(
        (48, 128, 192, 192, 128),
        description="Kernels per tower in conv1..conv5 at width 1.0 (paper: 48/128/192/192/128); each at most "
        f"{MAX_CHANNELS}.",
    )
    conv_kernel_sizes: tuple[KernelSide, KernelSide, KernelSide, KernelSide, KernelSide] = Field(
        (11, 5, 3, 3, 3), description=f"Kernel side of conv1..conv5; each at most {MAX_KERNEL_SIDE}."
    )
    conv1_stride: int = Field(4, ge=1, le=16, description="Stride of conv1 (paper: 4); at most 16.")
    tower_fc_neurons: int = Field(
        2048,
        ge=1,
        le=MAX_FC_NEURONS,
        description=f"Neurons per tower in fc6 and fc7 at width 1.0 (paper: 2048); at most {MAX_FC_NEURONS}.",
    )
    pool_kernel: int = Field(3, ge=1, le=15, description="Max-pool window z (paper: 3, overlapping); at most 15.")
    pool_stride: int = Field(2, ge=1, le=15, description="Max-pool stride s (paper: 2); at most 15.")
    lrn_size: int = Field(5, ge=1, le=31, description="LRN neighbourhood n in channels (paper: 5); at most 31.")
    lrn_alpha: float = Field(1e-4, ge=0.0, description="LRN alpha as printed in the paper (1e-4).")
    lrn_alpha_convention: Literal["authors_code", "printed"] = Field(
        "authors_code",
        description="'authors_code': k + (alpha/n) * sum a^2, as cuda-convnet (layer.py: scale /= size) and Caffe "
        "compute it, "
        "the network behind the paper's results; 'printed': k + alpha * sum a^2, the formula as the paper prints it.",
    )
    lrn_beta: float = Field(0.75, ge=0.0, description="LRN beta (paper: 0.75).")
    lrn_k: float = Field(2.0, ge=0.0, description="LRN k (paper: 2).")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="Dropout probability on fc6 and fc7 outputs (paper: 0.5).")
    init_scheme: Literal["auto", "paper", "he"] = Field(
        "auto",
        description="'paper': weights ~ N(0, init_weight_std^2). 'he': N(0, 2/fan_in) (fc8: 1/fan_in), a departure for "
        "nets "
        "below the paper's size, where a fixed std 0.01 leaves the signal too small to learn. 'auto': paper at paper "
        "size "
        "(see `paper_sized`), he below.",
    )
    init_weight_std: float = Field(
        0.01, gt=0.0, le=1.0, description="Weights start from N(0, std^2) with init_scheme 'paper' (paper: std 0.01)."
    )
    init_bias_one_layers: tuple[str, ...] | None = Field(
        None,
        description="Layers whose biases start at 1; the others start at 0. None: the paper's conv2, conv4, conv5, "
        "fc6, fc7 at "
        "paper size, none below (a bias of 1 before a ReLU swamps the small signal of a narrow net).",
    )
    input_scaling: Literal["auto", "raw", "unit"] = Field(
        "auto",
        description="'raw': conv1 sees the centred 0..255 pixels, as in the paper. 'unit': they are divided by the "
        "training "
        "set's pixel std first (`pixel_std`), so the first layer's scale does not depend on the data's contrast. "
        "'auto': raw "
        "at paper size, unit below.",
    )
    pixel_std: float | None = Field(
        None,
        gt=0.0,
        le=255.0,
        description="Std of the centred training pixels (0..255 units), measured from the data when a job "
        "starts; not set by hand. None (a net built without its data): ImageNet's, about "
        f"{IMAGENET_CENTRED_PIXEL_STD:g}.",
    )

    @property
    def paper_sized(self) -> bool:
        """Full width on the paper's input: every 'auto' choice is then the paper's own."""
        return self.width == 1.0 and self.input_size >= PAPER_INPUT_SIZE

    @property
    def init_scheme_used(self) -> str:
        if self.init_scheme != "auto":
            return self.init_scheme
        return "paper" if self.paper_sized else "he"

    @property
    def bias_one_layers_used(self) -> tuple[str, ...]:
        if self.init_bias_one_layers is not None:
            return self.init_bias_one_layers
        return PAPER_BIAS_ONE_LAYERS if self.paper_sized else ()

    @property
    def input_scaling_used(self) -> str:
        if self.input_scaling != "auto":
            return self.input_scaling
        return "raw" if self.paper_sized else "unit"

    @property
    def input_divisor(self) -> float:
        """What the centred pixels are divided by before conv1 (1.0: raw pixels)."""
        if self.input_scaling_used == "raw":
            return 1.0
        return self.pixel_std_used

    @property
    def pixel_std_used(self) -> float:
        """The measured pixel std; before any measurement (a net built without data), ImageNet's."""
        return IMAGENET_CENTRED_PIXEL_STD if self.pixel_std is None else self.pixel_std

    @property
    def classes(self) -> int:
        """fc8's outputs: the data's (set by hand or by resolving a job, train/recipe.py), else the paper's 1000.

        A job never reaches the fallback: resolving it fills num_classes from its data first.
        """
        return PAPER_NUM_CLASSES if self.num_classes is None else self.num_classes

    @property
    def conv_channels(self) -> tuple[int, ...]:
        """Kernels per tower after the width multiplier."""
        return tuple(max(1, round(c * self.width)) for c in self.tower_conv_channels)

    @property
    def fc_neurons(self) -> int:
        return max(1, round(self.tower_fc_neurons * self.width))

    @property
    def classes_per_tower(self) -> tuple[int, int]:
        """fc8 split: tower 0 holds the first ceil(n/2) classes, tower 1 the rest."""
        first = self.classes - self.classes // 2
        return first, self.classes - first

    def spatial_sizes(self) -> dict[str, int]:
        """Side of each layer's output map, for the configured input."""
        sizes: dict[str, int] = {}
        s = conv_output_size(self.input_size, self.conv_kernel_sizes[0], self.conv1_stride, self.conv1_padding)
        sizes["conv1"] = s
        s = conv_output_size(s, self.pool_kernel, self.pool_stride, 0)
        sizes["pool1"] = s
        sizes["conv2"] = s  # 'same' padding: k // 2
        s = conv_output_size(s, self.pool_kernel, self.pool_stride, 0)
        sizes["pool2"] = s
        sizes["conv3"] = sizes["conv4"] = sizes["conv5"] = s
        s = conv_output_size(s, self.pool_kernel, self.pool_stride, 0)
        sizes["pool5"] = s
        return sizes

    @property
    def fc6_inputs(self) -> int:
        """Inputs of fc6 across both towers (paper: 6*6*256 = 9216)."""
        return 2 * self.conv_channels[4] * self.spatial_sizes()["pool5"] ** 2

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        bad = [name for name, s in self.spatial_sizes().items() if s < 1]
        if bad:
            smallest = next(
                n
                for n in range(1, 1024)
                if min(self.model_copy(update={"input_size": n}).spatial_sizes().values()) >= 1
            )
            raise ValueError(
                f"input_size {self.input_size} with conv1_padding {self.conv1_padding} leaves no pixels after "
                f"{bad[0]}; "
                f"use at least {smallest} (224 is the paper's size)"
            )
        if self.lrn_size % 2 == 0:
            raise ValueError(f"lrn_size must be odd so the window is centred, got {self.lrn_size}")
        known = {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"}
        unknown = set(self.init_bias_one_layers or ()) - known
        if unknown:
            raise ValueError(f"init_bias_one_layers names unknown layers {sorted(unknown)}; known: {sorted(known)}")
        return self
