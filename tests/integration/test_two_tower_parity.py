"""Two tower processes over gloo equal the single-process grouped model.

Float64 throughout, so the only differences are summation order: 1e-5 relative
is far above that noise (about 1e-13) and far below any real mistake (a missing
half, a swapped tower order, a doubled gradient are all O(1) relative); see
helpers.parity.RTOL. The ranks' code is the `rank_*` functions below, run by
helpers.processes.run_ranks as real processes.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from alexserve.model import AlexNetGrouped, join_tower_states
from alexserve.parallel.topology import Topology
from alexserve.train.optimizer import PaperSGD
from alexserve.train.step import grouped_train_step, tower_forward_logits, tower_train_step
from helpers.parity import (
    DROPOUT_SEED,
    RTOL,
    SEED,
    assert_matches_reference,
    make_batch,
    parity_model_config,
    parity_tower,
)
from helpers.processes import rank_main, run_ranks
from helpers.tensors import context

# ------------------------------------------------------------------ what each rank runs


def rank_gradients(topology: Topology, out: Path, dropout_seed: int | None) -> None:
    """Forward and backward of the parity batch; saves logits, loss, this tower's gradients and the exchange stats."""
    tower, exchange = parity_tower(topology)
    images, labels = make_batch()
    logits = tower_forward_logits(tower, exchange, images, dropout_seed)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    stats = {f"{point}/{direction}": (e.seconds, e.bytes) for (point, direction), e in exchange.stats.take().items()}
    grads = {name: p.grad for name, p in tower.named_parameters()}
    torch.save(
        {"logits": logits.detach(), "loss": loss.detach(), "grads": grads, "stats": stats},
        out / f"rank{topology.rank}.pt",
    )


def rank_sgd_steps(topology: Topology, out: Path) -> None:
    """Two SGD steps with dropout on; saves this tower's weights and the losses."""
    tower, exchange = parity_tower(topology)
    optimizer = PaperSGD(tower.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images, labels = make_batch()
    losses = [
        tower_train_step(tower, exchange, optimizer, images, labels, DROPOUT_SEED + step).loss for step in range(2)
    ]
    torch.save({"weights": tower.state_dict(), "losses": losses}, out / f"rank{topology.rank}.pt")


# ------------------------------------------------------------------ the single-process reference, and the tests


def reference(dropout_seed: int | None):
    model = AlexNetGrouped.from_seed(parity_model_config(), SEED).double()
    images, labels = make_batch()
    logits = model(images, dropout_seed)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    return model, logits.detach(), loss.detach()


def check_gradients(tmp_path: Path, dropout_seed: int | None) -> list[dict]:
    run_ranks(rank_gradients, tmp_path, dropout_seed=dropout_seed)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    model, logits, loss = reference(dropout_seed)
    for rank, result in enumerate(ranks):
        assert_matches_reference(result["logits"], logits, f"rank {rank} logits")
        assert_matches_reference(result["loss"], loss, f"rank {rank} loss")
    grads = join_tower_states(model.cfg, [r["grads"] for r in ranks])
    for name, param in model.named_parameters():
        assert_matches_reference(grads[name], param.grad, f"gradient of {name}")
    return ranks


def test_logits_loss_and_every_gradient_match_grouped_model(tmp_path):
    ranks = check_gradients(tmp_path, None)
    # Every exchange point was timed in both directions, and moved bytes.
    stats = ranks[0]["stats"]
    for point in ("conv3", "fc6", "fc7", "fc8"):
        for direction in ("forward", "backward"):
            seconds, nbytes = stats[f"{point}/{direction}"]
            assert seconds >= 0 and nbytes > 0
    assert "logits/forward" in stats and "logits/backward" not in stats


def test_dropout_under_shared_seed_matches_grouped_model(tmp_path):
    check_gradients(tmp_path, DROPOUT_SEED)
    # And dropout really was on: the grouped logits differ without it.
    _, with_dropout, _ = reference(DROPOUT_SEED)
    _, without, _ = reference(None)
    assert (with_dropout - without).abs().max() > 1e-3


def test_sgd_steps_land_on_the_same_weights(tmp_path):
    run_ranks(rank_sgd_steps, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    model = AlexNetGrouped.from_seed(parity_model_config(), SEED).double()
    optimizer = PaperSGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images, labels = make_batch()
    losses = [grouped_train_step(model, optimizer, images, labels, DROPOUT_SEED + step).loss for step in range(2)]
    assert ranks[0]["losses"] == ranks[1]["losses"]  # both ranks compute the identical loss
    torch.testing.assert_close(
        ranks[0]["losses"][1],
        losses[1],
        rtol=RTOL,
        atol=0,
        msg=context("the second step's loss differs from the reference"),
    )
    weights = join_tower_states(model.cfg, [r["weights"] for r in ranks])
    moved = 0.0
    start = AlexNetGrouped.from_seed(parity_model_config(), SEED).double().state_dict()
    for name, value in model.state_dict().items():
        assert_matches_reference(weights[name], value, f"weights of {name} after two steps")
        moved = max(moved, float((value - start[name]).abs().max()))
    assert moved > 1e-4, "the steps did not move the weights: the comparison would be vacuous"


if __name__ == "__main__":
    rank_main()
