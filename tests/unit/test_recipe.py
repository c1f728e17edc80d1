"""The 'auto' recipe: the paper's choices at paper size, the documented departures below, values measured from the
data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alexserve.config import (
    IMAGENET_CENTRED_PIXEL_STD,
    PAPER_BIAS_ONE_LAYERS,
    PAPER_NUM_CLASSES,
    DataConfig,
    JobConfig,
    ModelConfig,
    TrainConfig,
    build_config,
    demo_config,
)
from alexserve.data.mirror_check import MIRROR_CHECK_FILE, MirrorCheck
from alexserve.data.prepared_tree import DatasetError
from alexserve.data.stats import StatsAccumulator
from alexserve.model import AlexNetGrouped
from alexserve.train.recipe import departures, resolve_job
from helpers.datasets import NUM_CLASSES, tiny_prepared_tree


def test_paper_size_keeps_every_choice_of_the_paper():
    job = JobConfig(model=ModelConfig(num_classes=1000), data=DataConfig(source="generated"))
    assert job.model.paper_sized
    assert job.model.init_scheme_used == "paper"
    assert job.model.bias_one_layers_used == PAPER_BIAS_ONE_LAYERS
    assert job.model.input_scaling_used == "raw" and job.model.input_divisor == 1.0
    assert job.warmup_epochs_used == 0.0
    assert job.lr_epoch_budget is None
    assert job.data.flip_probability_used == 0.5 and job.data.test_time_mirrors
    assert departures(job) == []


@pytest.mark.parametrize("width, input_size", [(0.25, 64), (1.0, 64), (0.5, 224)])
def test_below_paper_size_every_departure_is_taken_and_named(width, input_size):
    job = JobConfig(model=ModelConfig(num_classes=10, width=width, input_size=input_size, pixel_std=50.0))
    assert not job.model.paper_sized
    assert (job.model.init_scheme_used, job.model.bias_one_layers_used, job.model.input_divisor) == ("he", (), 50.0)
    assert job.warmup_epochs_used == 1.0
    assert job.lr_epoch_budget == job.train.num_epochs
    lines = departures(job)
    assert [line.split(":")[0] for line in lines] == ["init", "biases", "input", "learning rate", "learning rate"]
    assert "when no more epochs are left of 90 than reductions are due" in lines[4]
    assert all(f"width {width:g}, input {input_size}" in line for line in lines)


def test_fields_set_by_hand_win_over_auto():
    model = ModelConfig(
        num_classes=10,
        width=0.25,
        input_size=64,
        init_scheme="paper",
        init_bias_one_layers=PAPER_BIAS_ONE_LAYERS,
        input_scaling="raw",
    )
    job = JobConfig(model=model, optim={"warmup_epochs": 0, "reductions_within_budget": False})
    assert departures(job) == []


def test_printed_lrn_is_named_as_a_departure():
    job = JobConfig(model=ModelConfig(num_classes=1000, lrn_alpha_convention="printed"))
    assert departures(job) == [
        "LRN: the paper's printed alpha (not divided by n), five times stronger than the authors' code"
    ]


def test_classes_scale_and_pixel_std_come_from_the_prepared_tree():
    _, dst, _ = tiny_prepared_tree()
    job = JobConfig(
        model=ModelConfig(width=0.25, input_size=64), data=DataConfig(source="folder", train_dir=dst / "train")
    )
    resolved = resolve_job(job).job
    assert resolved.model.num_classes == NUM_CLASSES
    assert resolved.data.scale_size == 256
    assert 5.0 < resolved.model.pixel_std < 128.0


def test_a_wrong_class_count_names_both_numbers():
    _, dst, _ = tiny_prepared_tree()
    job = JobConfig(model=ModelConfig(num_classes=7), data=DataConfig(source="folder", train_dir=dst / "train"))
    with pytest.raises(DatasetError, match=f"lists {NUM_CLASSES} classes but model.num_classes is 7"):
        resolve_job(job)


def test_a_wrong_scale_size_names_both():
    _, dst, _ = tiny_prepared_tree()
    job = JobConfig(data=DataConfig(source="folder", train_dir=dst / "train", scale_size=73))
    with pytest.raises(DatasetError, match="prepared at scale_size 256 but data.scale_size is 73"):
        resolve_job(job)


def test_centred_pixel_std_equals_the_std_of_images_minus_the_mean_image():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 9, 9, 3)).astype(np.uint8)
    images[:, :4] //= 3  # a mean image that is not flat
    acc = StatsAccumulator(9)
    for image in images:
        acc.add(image)
    stats = acc.finish()
    direct = (images.astype(np.float64) - images.astype(np.float64).mean(axis=0)).std()
    assert stats.centred_pixel_std() == pytest.approx(direct, rel=1e-9)


def test_generated_data_resolves_without_a_tree():
    job = JobConfig(model=ModelConfig(width=0.25, input_size=64), data=DataConfig(source="generated"))
    resolved = resolve_job(job).job
    assert (resolved.model.num_classes, resolved.data.scale_size) == (10, 73)
    assert resolved.model.pixel_std > 1.0


def test_reduced_net_starts_at_the_loss_of_a_uniform_guess_and_keeps_its_signal():
    """He init keeps unit-scale activations alive to fc7 whatever the width; fc8 at 0 makes the first loss
    ln(classes)."""
    for width in (0.25, 1.0):
        cfg = ModelConfig(num_classes=10, width=width, input_size=64, pixel_std=60.0)
        model = AlexNetGrouped.from_seed(cfg, 0).double()
        images = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 60.0
        seen = {}
        model.fc7.register_forward_hook(lambda module, args, out: seen.__setitem__("fc7", out))  # noqa: B023 (run in this pass)
        with torch.no_grad():
            loss = F.cross_entropy(model(images), torch.arange(8) % 10)
        assert float(loss) == pytest.approx(math.log(10), abs=1e-9)
        assert 0.3 < float(seen["fc7"].std()) < 30.0, width
        assert (
            float(model.fc8.weight.detach().abs().max()) == 0.0 and float(model.conv2.bias.detach().abs().max()) == 0.0
        )


def test_the_demo_sets_only_what_a_user_sets():
    """No special constants: the demo's model, optimiser and data fields other than these are the defaults."""
    demo = demo_config()
    assert demo.model.model_dump(exclude_defaults=True) == {"width": 0.25, "input_size": 64}
    assert demo.optim.model_dump(exclude_defaults=True) == {}
    assert set(demo.data.model_dump(exclude_defaults=True)) == {"source", "train_dir"}
    user_fields = {"batch_size", "num_epochs", "log_every_steps", "run_dir"}
    assert set(demo.train.model_dump(exclude_defaults=True)) <= user_fields


def test_a_job_left_unset_takes_its_data_not_the_bare_nets_defaults():
    """A bare ModelConfig builds the paper's 1000-class net (test_model.py), but a job leaves num_classes and
    pixel_std to its data: unset means None, which survives the JSON the supervisor hands the worker."""
    _, dst, _ = tiny_prepared_tree()
    job = JobConfig(data=DataConfig(source="folder", train_dir=dst / "train"))
    assert (job.model.num_classes, job.model.classes) == (None, PAPER_NUM_CLASSES)
    for form in (job, build_config(job.model_dump(mode="json"))):  # as written, and after the supervisor's round trip
        resolved = resolve_job(form).job
        assert resolved.model.num_classes == NUM_CLASSES != PAPER_NUM_CLASSES
        assert resolved.model.pixel_std != IMAGENET_CENTRED_PIXEL_STD
        assert AlexNetGrouped(resolved.model).fc8.out_features == NUM_CLASSES
    reduced = resolve_job(job.model_copy(update={"model": ModelConfig(width=0.25, input_size=64)})).job
    assert reduced.model.input_divisor == reduced.model.pixel_std != IMAGENET_CENTRED_PIXEL_STD
    assert TrainConfig().batch_size == 128  # the paper's


def test_flips_follow_the_trees_mirror_check_unless_set_by_hand():
    _, dst, _ = tiny_prepared_tree()
    saved = (dst / MIRROR_CHECK_FILE).read_bytes()
    assert MirrorCheck.load(dst / MIRROR_CHECK_FILE).mirroring_keeps_class  # striped textures: mirror-symmetric
    job = JobConfig(
        model=ModelConfig(width=0.25, input_size=64), data=DataConfig(source="folder", train_dir=dst / "train")
    )
    try:
        kept = resolve_job(job)
        assert kept.job.data.flip_probability == 0.5 and not any(line.startswith("flips") for line in kept.departures)
        MirrorCheck(nearest_mean_accuracy=0.9, mirrored_accuracy=0.2, chance=0.1, images=40).save(
            dst / MIRROR_CHECK_FILE
        )
        lost = resolve_job(job)
        assert lost.job.data.flip_probability == 0.0 and not lost.job.data.test_time_mirrors
        assert [line for line in lost.departures if line.startswith("flips")] == [
            "flips: none, and no mirrored patches in the ten-crop test, instead of the paper's random reflections: "
            "mirroring loses the class in this data (a nearest-class-mean check on 40 training images is right on "
            "90% of them and on 20% of their mirror images (chance 10%))"
        ]
        by_hand = job.model_copy(update={"data": job.data.model_copy(update={"flip_probability": 0.5})})
        assert resolve_job(by_hand).job.data.flip_probability == 0.5
        assert kept.notices == lost.notices == []
        (dst / MIRROR_CHECK_FILE).unlink()  # prepared before the check existed: the paper's flips, and a notice
        old_tree = resolve_job(job)
        assert old_tree.job.data.flip_probability == 0.5
        assert old_tree.notices == [
            f"flips: the paper's random reflections, unchecked: {dst} was prepared before `alexserve prepare` "
            f"checked whether mirroring keeps the class (no {MIRROR_CHECK_FILE}); prepare it again to have that "
            "checked, or set data.flip_probability"
        ]
        assert resolve_job(by_hand).notices == []
    finally:
        (dst / MIRROR_CHECK_FILE).write_bytes(saved)
