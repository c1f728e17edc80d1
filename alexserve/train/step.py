"""One SGD step, in the tower form (one rank) and in the grouped form (reference).

The tower step reads nothing back: its loss and error counts stay on the device (`StepTensors`), summed by the
interval meter (progress.py) and read only when a progress line or a report is due. On a GPU every `float()`
or `.item()` would make the host wait for the device, so the next step could not be queued behind this one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alexserve.model import AlexNetGrouped
from alexserve.parallel.data_parallel import gradient_sync_failures, tower_of
from alexserve.parallel.exchange import PeerExchange
from alexserve.train.precision import FP32, Precision


@dataclass
class StepResult:
    """A step's figures, read back to the host."""

    loss: float
    top1_errors: int
    top5_errors: int
    images: int


@dataclass
class StepTensors:
    """A step's figures, still on the device: 0-d tensors (the loss in its compute dtype, the counts in int64)."""

    loss: torch.Tensor
    top1_errors: torch.Tensor
    top5_errors: torch.Tensor
    images: int

    def read(self) -> StepResult:
        """Reads the figures back (a device sync on a GPU: not on the training loop's path)."""
        loss, top1, top5 = torch.stack([self.loss.double(), self.top1_errors.double(), self.top5_errors.double()])
        return StepResult(float(loss), int(top1), int(top5), self.images)


def topk_errors(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Images whose label is not among the k highest logits (k capped at the class count), as a 0-d device tensor."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top != labels[:, None]).all(dim=1).sum()


def summarize(loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> StepTensors:
    return StepTensors(loss, topk_errors(logits, labels, 1), topk_errors(logits, labels, 5), len(labels))


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
    precision: Precision = FP32,
) -> StepTensors:
    """One step of one tower. With several pairs `model` is the tower in DDP, and backward averages the gradients.

    Under `precision`'s autocast (bf16) the forward and the loss run in it; backward and the update do not.
    """
    optimizer.zero_grad(set_to_none=True)
    with gradient_sync_failures(model, exchange.rank):
        with precision.autocast():
            logits = tower_forward_logits(model, exchange, precision.images(images), dropout_seed)
            loss = F.cross_entropy(logits, labels)
        loss.backward()
    optimizer.step()
    return summarize(loss.detach(), logits.detach(), labels)


def grouped_step_tensors(
    model: AlexNetGrouped,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    dropout_seed: int | None,
) -> StepTensors:
    """The single-process reference step, its figures left on the device (what the doctor times on one GPU)."""
    optimizer.zero_grad(set_to_none=True)
    logits = model(images, dropout_seed)
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
    """The single-process reference step; it reads its figures back at once (it is not the pair's hot path)."""
    return grouped_step_tensors(model, optimizer, images, labels, dropout_seed).read()
