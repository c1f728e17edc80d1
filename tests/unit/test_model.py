"""The network against the paper's table: parameter count, shapes, LRN, init, layout."""

from __future__ import annotations

import pytest
import torch

from alexserve.config import IMAGENET_CENTRED_PIXEL_STD, ConfigError, ModelConfig, build_config
from alexserve.model import AlexNetGrouped, AlexNetTower, join_tower_states, split_grouped_state
from alexserve.model.lrn import PaperLRN
from helpers.tensors import context

PAPER_PARAMETERS = 60_965_224


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_is_the_papers():
    cfg = ModelConfig(num_classes=1000)
    assert count(AlexNetTower(cfg, 0)) + count(AlexNetTower(cfg, 1)) == PAPER_PARAMETERS
    assert count(AlexNetGrouped(cfg)) == PAPER_PARAMETERS


def test_the_bare_defaults_build_the_papers_1000_class_net():
    """For inspecting the net, loading weights or one's own loop: no data tree, no job to resolve."""
    cfg = ModelConfig()
    model = AlexNetGrouped(cfg)
    assert count(model) == PAPER_PARAMETERS
    assert model.fc8.out_features == 1000 and model.input_divisor == 1.0  # raw pixels, as in the paper
    assert count(AlexNetTower(cfg, 0)) + count(AlexNetTower(cfg, 1)) == PAPER_PARAMETERS


@pytest.mark.parametrize("num_classes, outputs", [(10, 10), (None, 1000)])
def test_a_reduced_net_builds_and_runs_without_data(num_classes, outputs):
    """Below paper size the input is divided by the pixel std: unmeasured, ImageNet's."""
    cfg = ModelConfig(width=0.25, input_size=64, num_classes=num_classes)
    assert cfg.input_scaling_used == "unit" and cfg.input_divisor == IMAGENET_CENTRED_PIXEL_STD
    model = AlexNetGrouped.from_seed(cfg, 0).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * IMAGENET_CENTRED_PIXEL_STD
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (2, outputs) and bool(torch.isfinite(logits).all())


@pytest.mark.parametrize("input_size,padding", [(224, 2), (227, 0)])
def test_every_layer_output_shape_matches_the_paper(input_size, padding):
    cfg = ModelConfig(num_classes=1000, input_size=input_size, conv1_padding=padding)
    model = AlexNetGrouped(cfg).eval()
    shapes = {}
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:]))
        )
    pools = []
    model.pool.register_forward_hook(lambda m, i, o: pools.append(tuple(o.shape[1:])))
    with torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size))
    # Paper table: 96@55, 256@27, 384@13, 384@13, 256@13, 4096, 4096, 1000; pools 27, 13, 6.
    assert shapes == {
        "conv1": (96, 55, 55),
        "conv2": (256, 27, 27),
        "conv3": (384, 13, 13),
        "conv4": (384, 13, 13),
        "conv5": (256, 13, 13),
        "fc6": (4096,),
        "fc7": (4096,),
        "fc8": (1000,),
    }
    assert pools == [(96, 27, 27), (256, 13, 13), (256, 6, 6)]
    assert cfg.fc6_inputs == 9216


def test_tower_holds_half_of_every_layer():
    tower = AlexNetTower(ModelConfig(num_classes=1000), 1)
    assert [getattr(tower, f"conv{i}").out_channels for i in range(1, 6)] == [48, 128, 192, 192, 128]
    in_features = (tower.conv3.in_channels, tower.fc6.in_features, tower.fc7.in_features, tower.fc8.in_features)
    assert in_features == (256, 9216, 4096, 4096)
    assert (tower.fc6.out_features, tower.fc7.out_features, tower.fc8.out_features) == (2048, 2048, 500)


def reference_lrn(a: torch.Tensor, n: int, coefficient: float, beta: float, k: float) -> torch.Tensor:
    """b[i] = a[i] / (k + coefficient * sum of a[j]^2 over the n channels around i) ** beta, by loops."""
    expected = torch.empty_like(a)
    channels = a.shape[1]
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        expected[:, i] = a[:, i] / (k + coefficient * (a[:, lo : hi + 1] ** 2).sum(dim=1)) ** beta
    return expected


@pytest.mark.parametrize("convention, coefficient", [("authors_code", 1e-4 / 5), ("printed", 1e-4)])
def test_lrn_follows_the_chosen_reading_of_alpha(convention, coefficient):
    """The authors' code divides alpha by n (the default); the printed formula does not."""
    torch.manual_seed(0)
    a = torch.randn(2, 11, 4, 4, dtype=torch.float64) * 300
    cfg = ModelConfig(lrn_alpha_convention=convention)
    expected = reference_lrn(a, 5, coefficient, 0.75, 2.0)
    torch.testing.assert_close(
        PaperLRN(cfg)(a), expected, rtol=1e-12, atol=0, msg=context(f"LRN ({convention}) against the loop")
    )
    # Grouped: the window never crosses into the other tower's maps.
    two = torch.cat([a, a * 3], dim=1)
    grouped = PaperLRN(cfg, groups=2)(two)
    torch.testing.assert_close(
        grouped[:, :11], expected, rtol=1e-12, atol=0, msg=context("grouped LRN, first tower's maps")
    )
    torch.testing.assert_close(
        grouped[:, 11:],
        reference_lrn(a * 3, 5, coefficient, 0.75, 2.0),
        rtol=1e-12,
        atol=0,
        msg=context("grouped LRN, second tower's maps"),
    )


def test_default_lrn_is_torchs_local_response_norm_with_the_papers_constants():
    a = torch.randn(2, 8, 3, 3, dtype=torch.float64) * 300
    torchs = torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(a)
    torch.testing.assert_close(PaperLRN(ModelConfig())(a), torchs, msg=context("PaperLRN against torch's"))


def test_initialisation_follows_the_paper():
    cfg = ModelConfig(num_classes=1000)
    model = AlexNetGrouped.from_seed(cfg, seed=0)
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        layer = getattr(model, name)
        bias = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        torch.testing.assert_close(
            layer.bias.detach(),
            torch.full_like(layer.bias.detach(), bias),
            rtol=0,
            atol=0,
            msg=context(f"{name}.bias is not all {bias}"),
        )
        assert abs(float(layer.weight.detach().mean())) < 1e-3, name
        std_tolerance = 0.0015 * (1 + 30 / layer.weight.numel() ** 0.5)
        assert abs(float(layer.weight.detach().std()) - 0.01) < std_tolerance, name


def test_grouped_and_tower_layouts_round_trip():
    cfg = ModelConfig(width=0.25, num_classes=9, input_size=99, pixel_std=50.0)
    grouped = AlexNetGrouped.from_seed(cfg, seed=5)
    towers = split_grouped_state(cfg, grouped.state_dict())
    for t, state in enumerate(towers):
        tower = AlexNetTower(cfg, t)
        tower.load_state_dict(state)  # same names, same shapes
        fresh = AlexNetTower(cfg, t)
        fresh.reset_parameters(5)
        for name, value in fresh.state_dict().items():
            torch.testing.assert_close(
                state[name],
                value,
                rtol=0,
                atol=0,
                msg=context(f"tower {t} {name}: grouped init is not the towers' init"),
            )
    joined = join_tower_states(cfg, towers)
    for name, value in grouped.state_dict().items():
        torch.testing.assert_close(
            joined[name], value, rtol=0, atol=0, msg=context(f"{name}: split then joined is not the grouped state")
        )
    assert towers[0]["fc8.weight"].shape[0] == 5 and towers[1]["fc8.weight"].shape[0] == 4


def test_bad_model_config_names_the_field():
    with pytest.raises(ConfigError) as err:
        build_config({"model": {"input_size": "big", "widht": 2}}, origin="job.yaml")
    message = str(err.value)
    assert "job.yaml" in message and "model.input_size" in message and "model.widht" in message
    with pytest.raises(ConfigError, match="model.lrn_size|lrn_size"):
        build_config({"model": {"lrn_size": 4}})


def test_too_small_input_names_the_smallest_that_works():
    with pytest.raises(ConfigError, match="input_size 48 .* use at least 63"):
        build_config({"model": {"input_size": 48}})
