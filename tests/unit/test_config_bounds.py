"""Every config field is bounded where a huge value only wastes memory or processes; no number may be non-finite."""

from __future__ import annotations

import pytest

from alexserve.config import ConfigError, JobConfig, build_config

HUGE_VALUES = [
    "model.num_classes=1e12",
    "model.num_classes=1000000000000",
    "model.input_size=1000000",
    "model.tower_conv_channels=[48,128,192,192,1000000]",
    "model.tower_fc_neurons=100000000",
    "train.batch_size=1000000000",
    "data.num_workers=100000",
    "data.generated_train_images=1000000000",
    "data.scale_size=1000000",
    "train.keep_last_checkpoints=1000000",
]
NON_FINITE = [
    "optim.learning_rate=.inf",
    "optim.learning_rate=.nan",
    "optim.momentum=.nan",
    "optim.weight_decay=.inf",
    "model.lrn_k=.inf",
    "model.lrn_alpha=.nan",
    "data.pca_lighting_std=.inf",
    "train.divergence_loss_factor=.inf",
]


@pytest.mark.parametrize("override", HUGE_VALUES + NON_FINITE)
def test_an_unbounded_or_non_finite_value_is_refused_naming_the_field(override):
    field = override.split("=")[0]
    with pytest.raises(ConfigError) as err:
        build_config({}, [override])
    assert field in str(err.value)


def test_every_integer_field_has_an_upper_bound():
    unbounded = []
    for section_name, section in JobConfig.model_fields.items():
        for name, field in section.annotation.model_fields.items():
            annotation = str(field.annotation)
            if "int" not in annotation or "Literal" in annotation or annotation.startswith("tuple["):
                continue  # tuple fields bound each element (ChannelCount, KernelSide), checked by the test above
            if not any(hasattr(limit, "le") or hasattr(limit, "lt") for limit in field.metadata):
                unbounded.append(f"{section_name}.{name}")
    assert unbounded == []


def test_the_paper_and_the_divergence_demo_stay_within_bounds():
    build_config({}, [])
    build_config({}, ["optim.learning_rate=100"])  # the divergence guard's demonstration must stay possible


def test_preempt_signals_default_and_refusals():
    from alexserve.config import DistConfig

    assert DistConfig().preempt_signals == ["SIGTERM", "SIGUSR1"]
    assert DistConfig(preempt_signals=[]).preempt_signals == []
    for bad, why in (("SIGKILL", "cannot be caught"), ("SIGNOPE", "not a signal name"), ("TERM", "not a signal")):
        with pytest.raises(ValueError, match=why):
            DistConfig(preempt_signals=[bad])
