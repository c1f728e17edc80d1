"""Validated configuration: the one home of every constant of the paper.

Every number the paper fixes (kernel counts, LRN constants, init, SGD, the
augmentation, the schedule) is a field here with the paper's value as its
default. Code reads these fields; it never repeats the numbers.

A job is a `JobConfig`, loaded from YAML or JSON (`load_config`) and adjusted
with dotted overrides (`--set train.batch_size=64`). Any invalid field is
reported by name, together with the file it came from.

One module per section (model.py, data.py, optim.py, train.py, dist.py), the
job that holds them (job.py), the loading of files and overrides (loading.py),
the bounds (limits.py) and the paper's shared constants (paper.py). Every public
name is re-exported here: `from alexserve.config import X` is the import path.
"""

from alexserve.config.data import DataConfig
from alexserve.config.dist import DistConfig
from alexserve.config.job import JobConfig, demo_config
from alexserve.config.limits import (
    MAX_BATCH_SIZE,
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_FC_NEURONS,
    MAX_GENERATED_IMAGES,
    MAX_INPUT_SIZE,
    MAX_KERNEL_SIDE,
    MAX_LOADER_WORKERS,
    MAX_STEPS,
    ChannelCount,
    KernelSide,
)
from alexserve.config.loading import (
    build_config,
    format_validation_error,
    load_config,
    parse_overrides,
    read_config_file,
    set_dotted,
)
from alexserve.config.model import ModelConfig, conv_output_size
from alexserve.config.optim import OptimConfig
from alexserve.config.paper import (
    IMAGENET_CENTRED_PIXEL_STD,
    PAPER_BIAS_ONE_LAYERS,
    PAPER_FLIP_PROBABILITY,
    PAPER_INPUT_SIZE,
    PAPER_NUM_CLASSES,
    PAPER_SCALE_SIZE,
    REDUCED_NET_WARMUP_EPOCHS,
    paper_scale_size,
)
from alexserve.config.strict_model import ConfigError, StrictModel
from alexserve.config.train import TrainConfig

__all__ = [
    "IMAGENET_CENTRED_PIXEL_STD",
    "MAX_BATCH_SIZE",
    "MAX_CHANNELS",
    "MAX_CLASSES",
    "MAX_FC_NEURONS",
    "MAX_GENERATED_IMAGES",
    "MAX_INPUT_SIZE",
    "MAX_KERNEL_SIDE",
    "MAX_LOADER_WORKERS",
    "MAX_STEPS",
    "PAPER_BIAS_ONE_LAYERS",
    "PAPER_FLIP_PROBABILITY",
    "PAPER_INPUT_SIZE",
    "PAPER_NUM_CLASSES",
    "PAPER_SCALE_SIZE",
    "REDUCED_NET_WARMUP_EPOCHS",
    "ChannelCount",
    "ConfigError",
    "DataConfig",
    "DistConfig",
    "JobConfig",
    "KernelSide",
    "ModelConfig",
    "OptimConfig",
    "StrictModel",
    "TrainConfig",
    "build_config",
    "conv_output_size",
    "demo_config",
    "format_validation_error",
    "load_config",
    "paper_scale_size",
    "parse_overrides",
    "read_config_file",
    "set_dotted",
]
