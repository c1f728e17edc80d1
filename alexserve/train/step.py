"""One SGD step, in the tower form (one rank) and in the grouped form (reference)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alexserve.model import AlexNetGrouped
from alexserve.parallel.data_parallel import gradient_sync_failures, tower_of
from alexserve.parallel.exchange import PeerExchange


@dataclass
class StepResult:
    loss: float
    top1_errors: int
    top5_errors: int
    images: int


def topk_errors(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    """Images whose label is not among the k highest logits (k capped at the class count)."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return int((top != labels[:, None]).all(dim=1).sum())


def summarize(loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> StepResult:
    return StepResult(float(loss), topk_errors(logits, labels, 1), topk_errors(logits, labels, 5), len(labels))


def tower_forward_logits(
    model: torch.nn.Module, exchange: PeerExchange, images: torch.Tensor, dropout_seed: int | None
) -> torch.Tensor:
    """All classes' logits as seen by this tower (identical on both ranks).

    `model` is an `AlexNetTower`, or one in DDP across pairs (parallel/data_parallel.py).
    """
    own = model(images, exchange, dropout_seed)
    tower = tower_of(model)
    return exchange.full_logits(own, tower.cfg.classes_per_tower[1 - tower.tower])


def tower_train_step(
    model: torch.nn.Module,
    exchange: PeerExchange,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    dropout_seed: int | None,
) -> StepResult:
    """One step of one tower. With several pairs `model` is the tower in DDP, and backward averages the gradients."""
    optimizer.zero_grad(set_to_none=True)
    with gradient_sync_failures(model, exchange.rank):
        logits = tower_forward_logits(model, exchange, images, dropout_seed)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
    optimizer.step()
    return summarize(loss.detach(), logits.detach(), labels)


def grouped_train_step(
    model: AlexNetGrouped,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    dropout_seed: int | None,
) -> StepResult:
    optimizer.zero_grad(set_to_none=True)
    logits = model(images, dropout_seed)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    optimizer.step()
    return summarize(loss.detach(), logits.detach(), labels)
