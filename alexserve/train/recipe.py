"""What a job leaves to 'auto', filled in from its data, and the departures from the paper that follow.

    resolved = resolve_job(job)
    resolved.job          # num_classes, scale_size, pixel_std and flips measured from the data
    resolved.departures   # one line per choice that is not the paper's, printed once at start
    resolved.notices      # what the user should know of the data behind them (a tree too old to be checked...)

At paper size (width 1.0 on 224-pixel or larger inputs) every 'auto' field is
the paper's choice. Below it, a narrow net on raw pixels with the paper's
N(0, 0.01) and bias-1 layers either never leaves its initial plateau or bursts
at the first steps, so the job departs where the cause lies: He init (the
signal keeps its scale whatever the width), biases 0 (a bias of 1 before a ReLU
swamps a small signal), inputs divided by the training set's pixel std (the
first layer's step size no longer depends on the data's contrast or
brightness) and a one-epoch learning-rate warmup. See README, "Departures".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alexserve.config import PAPER_BIAS_ONE_LAYERS, PAPER_FLIP_PROBABILITY, JobConfig
from alexserve.data.factory import open_prepared_tree
from alexserve.data.mirror_check import MIRROR_CHECK_FILE

# Generated images measured for their pixel std: enough for a stable figure, quick to make.
GENERATED_STD_SAMPLE = 64


@dataclass(frozen=True)
class ResolvedJob:
    job: JobConfig
    departures: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Measured:
    values: dict[str, dict]  # section -> field -> value taken from the data
    departures: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def _measured_from_folder(job: JobConfig) -> Measured:
    """The tree's measurements, why flips are off when its mirror check turned them off, and a notice when the
    tree is too old to have been checked."""
    tree = open_prepared_tree(job)  # checks fields set by hand against the tree, naming both values
    mirror = tree.mirror_check
    flips_lose_class = mirror is not None and not mirror.mirroring_keeps_class
    measured = {
        "model": {"num_classes": len(tree.classes), "pixel_std": tree.stats.centred_pixel_std()},
        "data": {
            "scale_size": tree.stats.scale_size,
            "flip_probability": 0.0 if flips_lose_class else PAPER_FLIP_PROBABILITY,
        },
    }
    departure_lines = []
    if flips_lose_class and job.data.flip_probability is None:
        departure_lines.append(
            "flips: none, and no mirrored patches in the ten-crop test, instead of the paper's random reflections: "
            f"mirroring loses the class in this data ({mirror.describe()})"
        )
    notices = []
    if mirror is None and job.data.flip_probability is None:
        notices.append(
            f"flips: the paper's random reflections, unchecked: {tree.train_dir.parent} was prepared before "
            f"`alexserve prepare` checked whether mirroring keeps the class (no {MIRROR_CHECK_FILE}); prepare it "
            "again to have that checked, or set data.flip_probability"
        )
    return Measured(measured, departure_lines, notices)


def _measured_from_generator(job: JobConfig) -> Measured:
    from alexserve.data.generated import GENERATED_NUM_CLASSES, generate_images, stored_size

    scale = stored_size(job)
    num_classes = job.model.num_classes or GENERATED_NUM_CLASSES
    sized = job.model_copy(
        update={
            "data": job.data.model_copy(update={"scale_size": scale}),
            "model": job.model.model_copy(update={"num_classes": num_classes}),
        }
    )
    images, _ = generate_images(sized, GENERATED_STD_SAMPLE, split_seed=1)
    return Measured(
        {
            "model": {"num_classes": num_classes, "pixel_std": float(images.double().std())},
            "data": {"scale_size": scale},
        }
    )


def with_measurements(job: JobConfig) -> tuple[JobConfig, Measured]:
    """The job with num_classes, scale_size, pixel_std and (prepared trees) flip_probability taken from its data,
    and what was measured, with a departure line for each measured choice that is not the paper's.

    Fields set by hand are checked, not replaced.
    """
    measured = _measured_from_folder(job) if job.data.source == "folder" else _measured_from_generator(job)
    tree = job.model_dump(mode="json")
    for section, values in measured.values.items():
        for name, value in values.items():
            if name == "pixel_std" or tree[section][name] is None:
                tree[section][name] = value
    return JobConfig.model_validate(tree), measured


def departures(job: JobConfig) -> list[str]:
    """One line per choice in effect that is not the paper's."""
    model, lines = job.model, []
    why = "" if model.paper_sized else f" (width {model.width:g}, input {model.input_size}: below paper size)"
    if model.init_scheme_used != "paper":
        lines.append(f"init: He, N(0, 2/fan_in), instead of the paper's N(0, {model.init_weight_std:g}){why}")
    if set(model.bias_one_layers_used) != set(PAPER_BIAS_ONE_LAYERS):
        ones = ", ".join(model.bias_one_layers_used) or "none"
        lines.append(f"biases: 1 in {ones} instead of the paper's {', '.join(PAPER_BIAS_ONE_LAYERS)}; 0 elsewhere{why}")
    if model.input_scaling_used == "unit":
        lines.append(
            f"input: centred pixels divided by the training set's pixel std ({model.pixel_std:.1f}), "
            f"instead of the paper's raw 0..255 values{why}"
        )
    if job.warmup_epochs_used > 0:
        lines.append(
            f"learning rate: linear warmup over {job.warmup_epochs_used:g} epoch(s) to {job.optim.learning_rate:g}{why}"
        )
    if job.lr_epoch_budget is not None and job.optim.max_lr_reductions > 0:
        lines.append(
            f"learning rate: also divided by {job.optim.lr_divisor:g} when no more epochs are left of "
            f"{job.lr_epoch_budget} than reductions are due ({job.optim.max_lr_reductions} at most), once a rate "
            f"has run {job.optim.plateau_patience} epochs, so a short run ends at a reduced rate{why}"
        )
    if model.lrn_alpha_convention == "printed":
        lines.append("LRN: the paper's printed alpha (not divided by n), five times stronger than the authors' code")
    return lines


def resolve_job(job: JobConfig) -> ResolvedJob:
    resolved, measured = with_measurements(job)
    return ResolvedJob(resolved, departures(resolved) + measured.departures, measured.notices)
