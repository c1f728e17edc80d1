"""Validated configuration: the one home of every constant of the paper.

Every number the paper fixes (kernel counts, LRN constants, init, SGD, the
augmentation, the schedule) is a field here with the paper's value as its
default. Code reads these fields; it never repeats the numbers.

A job is a `JobConfig`, loaded from YAML or JSON (`load_config`) and adjusted
with dotted overrides (`--set train.batch_size=64`). Any invalid field is
reported by name, together with the file it came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alexserve.untrusted_files import UntrustedFileError, load_yaml, read_small_regular_file


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names file and fields."""


class StrictModel(BaseModel):
    """Unknown fields are errors: a typo must not silently fall back to a default."""

    # No number may be NaN or infinite anywhere in a job: `allow_inf_nan=False` refuses them at every float field.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


# Upper bounds: a value above them only wastes memory or processes (each is also said in its field's description).
MAX_CLASSES = 100_000
MAX_INPUT_SIZE = 1024
MAX_CHANNELS = 4096
MAX_KERNEL_SIDE = 15
MAX_FC_NEURONS = 16384
MAX_LOADER_WORKERS = 64
MAX_GENERATED_IMAGES = 100_000
MAX_BATCH_SIZE = 8192
MAX_STEPS = 10**9

ChannelCount = Annotated[int, Field(ge=1, le=MAX_CHANNELS)]
KernelSide = Annotated[int, Field(ge=1, le=MAX_KERNEL_SIDE)]

PAPER_BIAS_ONE_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")
PAPER_INPUT_SIZE = 224
PAPER_SCALE_SIZE = 256
PAPER_FLIP_PROBABILITY = 0.5
# Below paper size the learning rate ramps up linearly over this many epochs (see OptimConfig.warmup_epochs).
REDUCED_NET_WARMUP_EPOCHS = 1.0


def paper_scale_size(input_size: int) -> int:
    """The stored image side for a crop of `input_size`, at the paper's 256:224 ratio."""
    return round(input_size * PAPER_SCALE_SIZE / PAPER_INPUT_SIZE)


class ModelConfig(StrictModel):
    """The network of the paper's figure 2, split into two towers."""

    num_classes: int | None = Field(
        None,
        ge=2,
        le=MAX_CLASSES,
        description="Classes of the softmax (fc8 outputs, split across the towers); None: the prepared "
        f"tree's classes.json (generated data: 10). At most {MAX_CLASSES:,} (ImageNet-21k has 21,841).",
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
        description="Std of the centred training pixels (0..255 units), measured from the data at "
        "start; not set by hand.",
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
        if self.pixel_std is None:
            raise ValueError(
                "model.pixel_std is not measured yet: resolve the job against its data first (alexserve.train.recipe)"
            )
        return self.pixel_std

    @property
    def classes(self) -> int:
        if self.num_classes is None:
            raise ValueError(
                "model.num_classes is not set: resolve the job against its data first (alexserve.train.recipe)"
            )
        return self.num_classes

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


class DataConfig(StrictModel):
    """Where images come from and the paper's augmentation."""

    source: Literal["generated", "folder"] = Field(
        "generated",
        description="'generated': in-memory learnable tensors (demo, tests); 'folder': a tree made by `alexserve "
        "prepare` or `alexserve synth`.",
    )
    train_dir: Path | None = Field(
        None, description="Prepared training tree (one folder per class), with its stats file."
    )
    val_dir: Path | None = Field(
        None, description="Prepared validation tree (one folder per class); None: the 'val' folder beside train_dir."
    )
    stats_path: Path | None = Field(
        None,
        description="Mean image and RGB PCA written by `alexserve prepare` (stats.npz); None: the one beside "
        "train_dir.",
    )
    loader: Literal["dali", "pil"] = Field(
        "dali", description="'dali' (the paper's path on NVIDIA DALI) or 'pil' (PIL + torch DataLoader peer)."
    )
    num_workers: int = Field(
        2,
        ge=0,
        le=MAX_LOADER_WORKERS,
        description=f"Decode/augment threads (DALI) or processes (PIL) per rank; at most {MAX_LOADER_WORKERS}.",
    )
    prefetch_batches: int = Field(2, ge=1, le=16, description="Batches prepared ahead of the one training; at most 16.")
    scale_size: int | None = Field(
        None,
        ge=1,
        le=2 * MAX_INPUT_SIZE,
        description="Shorter side after rescale and side of the central square kept (paper: "
        "256); None: the prepared tree's (stats.npz), or the paper's 256:224 ratio to model.input_size for generated "
        "data. "
        f"At most {2 * MAX_INPUT_SIZE}.",
    )
    flip_probability: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description=f"Chance of a horizontal reflection (paper: {PAPER_FLIP_PROBABILITY:g}); 0 also leaves the "
        "mirrored patches out of the ten-crop test. None: the paper's, unless the prepared tree's mirror check "
        "(data/mirror_check.py) shows that mirroring loses the class (a mirrored digit is no digit): then 0.",
    )
    pca_lighting_std: float = Field(
        0.1,
        ge=0.0,
        le=10.0,
        description="Std of the per-image, per-component PCA lighting coefficient (paper: 0.1); at most 10.",
    )
    generated_train_images: int = Field(
        2048,
        ge=1,
        le=MAX_GENERATED_IMAGES,
        description=f"Images in the generated training set, held in memory; at most {MAX_GENERATED_IMAGES:,}.",
    )
    generated_val_images: int = Field(
        512,
        ge=1,
        le=MAX_GENERATED_IMAGES,
        description=f"Images in the generated validation set, held in memory; at most {MAX_GENERATED_IMAGES:,}.",
    )

    @property
    def flip_probability_used(self) -> float:
        return PAPER_FLIP_PROBABILITY if self.flip_probability is None else self.flip_probability

    @property
    def test_time_mirrors(self) -> bool:
        """Whether the ten-crop test averages the mirrored patches too: only for a net that trained on mirrors."""
        return self.flip_probability_used > 0.0

    @model_validator(mode="after")
    def _check_source(self) -> DataConfig:
        if self.source == "folder" and self.train_dir is None:
            raise ValueError("source 'folder' needs train_dir")
        return self


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


class DistConfig(StrictModel):
    """How the two towers find each other."""

    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="'auto': NCCL when every rank has its own GPU, gloo otherwise."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto': cuda:LOCAL_RANK when there are enough GPUs, else CPU."
    )
    timeout_seconds: float = Field(
        60.0,
        gt=0.0,
        le=3600.0,
        description="A peer that died or froze (no heartbeat) is declared lost after this many seconds.",
    )
    collective_timeout_seconds: float = Field(
        1800.0,
        gt=0.0,
        le=86400.0,
        description="The process group's own timeout: the longest a collective or exchange waits for a live peer "
        "(a backstop for a deadlock; rank 0 alone may spend this long on a checkpoint or plot). At most 86400.",
    )


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


def format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"{origin}: {err.error_count()} invalid field(s)"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """`section.field=value` strings; values are parsed as YAML scalars (so 64 is an int, 1e-3 a float)."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: not a YAML value: {err}") from None
        parsed.append((key.strip(), value))
    return parsed


def build_config(base: dict[str, Any], overrides: list[str] = (), origin: str = "config") -> JobConfig:
    tree = json.loads(json.dumps(base, default=str))  # deep copy, paths as strings
    for key, value in parse_overrides(list(overrides)):
        set_dotted(tree, key, value)
    try:
        return JobConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin)) from None


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML or JSON mapping; errors name the file. Only a small regular file is parsed, and no YAML aliases."""
    try:
        data = read_small_regular_file(Path(path))
        text = data.decode("utf-8")
    except UntrustedFileError as err:
        raise ConfigError(str(err)) from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text: {err.reason} at byte {err.start}") from None
    is_json = str(path).endswith(".json")
    try:
        tree = json.loads(text) if is_json else load_yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError, RecursionError) as err:
        raise ConfigError(f"{path}: not valid {'JSON' if is_json else 'YAML'}: {err}") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(tree).__name__}")
    return tree


def load_config(path: Path | None, overrides: list[str] = ()) -> JobConfig:
    """The job at `path` (or the embedded demo when None), with overrides applied."""
    if path is None:
        return build_config(demo_config().model_dump(mode="json"), overrides, origin="demo config")
    return build_config(read_config_file(path), overrides, origin=str(path))
