"""Two tower processes over gloo equal the single-process grouped model.

Float64 throughout, so the only differences are summation order: 1e-5 relative
is far above that noise (about 1e-13) and far below any real mistake (a missing
half, a swapped tower order, a doubled gradient are all O(1) relative).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alexserve.model import AlexNetGrouped, join_tower_states
from alexserve.train.optimizer import PaperSGD
from alexserve.train.step import grouped_train_step
from helpers.processes import run_scenario
from helpers.parity import DROPOUT_SEED, SEED, make_batch, parity_model_config

RTOL = 1e-5


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    scale = expected.abs().max().clamp_min(1e-12)
    error = (actual - expected).abs().max() / scale
    assert error <= RTOL, f"{what}: max relative error {error:.3e} > {RTOL}"


def reference(dropout_seed: int | None):
    model = AlexNetGrouped.from_seed(parity_model_config(), SEED).double()
    images, labels = make_batch()
    logits = model(images, dropout_seed)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    return model, logits.detach(), loss.detach()


def check_gradients(tmp_path, scenario: str, dropout_seed: int | None) -> None:
    run_scenario(scenario, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    model, logits, loss = reference(dropout_seed)
    for rank, result in enumerate(ranks):
        assert_close(result["logits"], logits, f"rank {rank} logits")
        assert_close(result["loss"], loss, f"rank {rank} loss")
    grads = join_tower_states(model.cfg, [r["grads"] for r in ranks])
    for name, param in model.named_parameters():
        assert_close(grads[name], param.grad, f"gradient of {name}")
    return ranks


def test_logits_loss_and_every_gradient_match_grouped_model(tmp_path):
    ranks = check_gradients(tmp_path, "gradients", None)
    # Every exchange point was timed in both directions, and moved bytes.
    stats = ranks[0]["stats"]
    for point in ("conv3", "fc6", "fc7", "fc8"):
        for direction in ("forward", "backward"):
            seconds, nbytes = stats[f"{point}/{direction}"]
            assert seconds >= 0 and nbytes > 0
    assert "logits/forward" in stats and "logits/backward" not in stats


def test_dropout_under_shared_seed_matches_grouped_model(tmp_path):
    check_gradients(tmp_path, "gradients_dropout", DROPOUT_SEED)
    # And dropout really was on: the grouped logits differ without it.
    _, with_dropout, _ = reference(DROPOUT_SEED)
    _, without, _ = reference(None)
    assert (with_dropout - without).abs().max() > 1e-3


def test_sgd_steps_land_on_the_same_weights(tmp_path):
    run_scenario("sgd_steps", tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    model = AlexNetGrouped.from_seed(parity_model_config(), SEED).double()
    optimizer = PaperSGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images, labels = make_batch()
    losses = [grouped_train_step(model, optimizer, images, labels, DROPOUT_SEED + step).loss for step in range(2)]
    assert ranks[0]["losses"] == ranks[1]["losses"]  # both ranks compute the identical loss
    assert abs(ranks[0]["losses"][1] - losses[1]) <= RTOL * abs(losses[1])
    weights = join_tower_states(model.cfg, [r["weights"] for r in ranks])
    moved = 0.0
    start = AlexNetGrouped.from_seed(parity_model_config(), SEED).double().state_dict()
    for name, value in model.state_dict().items():
        assert_close(weights[name], value, f"weights of {name} after two steps")
        moved = max(moved, float((value - start[name]).abs().max()))
    assert moved > 1e-4, "the steps did not move the weights: the comparison would be vacuous"
