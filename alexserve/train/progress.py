"""Counters for a stretch of steps (a reporting interval, or a whole epoch), and the progress line built from them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class IntervalMeter:
    started: float = field(default_factory=time.perf_counter)
    steps: int = 0
    images: int = 0
    loss_sum: float = 0.0
    top1_errors: int = 0
    step_seconds: list[float] = field(default_factory=list)
    data_wait_seconds: float = 0.0
    exchange_seconds: float = 0.0

    def add_step(self, loss: float, top1_errors: int, images: int, seconds: float) -> None:
        self.steps += 1
        self.images += images
        self.loss_sum += loss * images
        self.top1_errors += top1_errors
        self.step_seconds.append(seconds)

    @property
    def elapsed(self) -> float:
        return max(time.perf_counter() - self.started, 1e-9)

    def line(self, epoch: int, num_epochs: int, step_in_epoch: int, steps_per_epoch: int, lr: float) -> str:
        images = max(self.images, 1)
        return (
            f"epoch {epoch + 1}/{num_epochs} step {step_in_epoch}/{steps_per_epoch} | "
            f"loss {self.loss_sum / images:.4f} | top-1 err {self.top1_errors / images:.3f} | "
            f"{self.images / self.elapsed:.1f} img/s | data wait {self.data_wait_seconds / self.elapsed:.1%} | "
            f"exchange {self.exchange_seconds / self.elapsed:.1%} | lr {lr:g}"
        )
