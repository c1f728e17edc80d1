"""Counters for a stretch of steps (a reporting interval, or a whole epoch), and the progress line built from them.

The step's loss and error counts are summed on the device (`add_step` queues two small additions and reads
nothing); `read()` is the one place they come back to the host, called when a progress line, a report or the
epoch's history is due. On a GPU that read waits for the device, once per interval instead of once per step
(the step times in between are the host's: queued work, not finished work; their sum up to a read is right).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class IntervalReading:
    """The interval's loss and top-1 error, read back: means per image."""

    loss: float
    top1_error: float


@dataclass
class IntervalMeter:
    started: float = field(default_factory=time.perf_counter)
    steps: int = 0
    images: int = 0
    # Sums over the interval's images, on the device of the steps (plain numbers until the first step).
    loss_sum: torch.Tensor | float = 0.0
    top1_errors: torch.Tensor | int = 0
    step_seconds: list[float] = field(default_factory=list)
    data_wait_seconds: float = 0.0
    exchange_seconds: float = 0.0
    _reading: IntervalReading | None = None

    def add_step(
        self, loss: torch.Tensor | float, top1_errors: torch.Tensor | int, images: int, seconds: float
    ) -> None:
        """Adds one step's figures (0-d device tensors, or plain numbers) without reading them."""
        self.steps += 1
        self.images += images
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().double()
        self.loss_sum = self.loss_sum + loss * images
        self.top1_errors = self.top1_errors + top1_errors
        self.step_seconds.append(seconds)
        self._reading = None

    def read(self) -> IntervalReading:
        """The one read-back of the interval's sums (a device sync on a GPU); repeated calls reuse it."""
        if self._reading is None:
            images = max(self.images, 1)
            if isinstance(self.loss_sum, torch.Tensor):
                loss_sum, errors = torch.stack([self.loss_sum, torch.as_tensor(self.top1_errors).double()]).tolist()
            else:
                loss_sum, errors = float(self.loss_sum), float(self.top1_errors)
            self._reading = IntervalReading(loss_sum / images, errors / images)
        return self._reading

    @property
    def elapsed(self) -> float:
        return max(time.perf_counter() - self.started, 1e-9)

    def line(self, epoch: int, num_epochs: int, step_in_epoch: int, steps_per_epoch: int, lr: float) -> str:
        reading = self.read()
        return (
            f"epoch {epoch + 1}/{num_epochs} step {step_in_epoch}/{steps_per_epoch} | "
            f"loss {reading.loss:.4f} | top-1 err {reading.top1_error:.3f} | "
            f"{self.images / self.elapsed:.1f} img/s | data wait {self.data_wait_seconds / self.elapsed:.1%} | "
            f"exchange {self.exchange_seconds / self.elapsed:.1%} | lr {lr:g}"
        )
