"""The training loop of one tower process.

Both towers of a pair run this same loop in lockstep: every forward and
backward meets the peer at the exchange points, so the two processes agree on
the step number without any extra synchronisation.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

from alexserve.config import JobConfig
from alexserve.data.source import EvalSource, TrainSource
from alexserve.model import AlexNetTower
from alexserve.model.dropout import dropout_seed
from alexserve.parallel.exchange import PeerExchange
from alexserve.parallel.topology import Topology
from alexserve.train.evaluation import EvalResult, evaluate
from alexserve.train.progress import IntervalMeter
from alexserve.train.step import tower_forward_logits, tower_train_step


@dataclass
class TrainOutcome:
    steps: int
    epochs_completed: int
    final_eval: dict[str, EvalResult]


class TowerTrainer:
    def __init__(
        self,
        job: JobConfig,
        topology: Topology,
        tower: AlexNetTower,
        link: PeerExchange,
        optimizer: torch.optim.Optimizer,
        train_source: TrainSource,
        eval_source: EvalSource | None,
        log: Callable[[str], None] | None = None,
    ):
        self.job, self.topology, self.tower, self.link = job, topology, tower, link
        self.optimizer, self.train_source, self.eval_source = optimizer, train_source, eval_source
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.global_step = 0

    def _say(self, line: str) -> None:
        if self.topology.is_primary:
            self.log(line)

    @property
    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def evaluate(self) -> dict[str, EvalResult]:
        self.tower.eval()
        try:
            logits_of = lambda images: tower_forward_logits(self.tower, self.link, images, None)  # noqa: E731
            return {mode: evaluate(logits_of, self.eval_source, mode) for mode in ("center", "ten_crop")}
        finally:
            self.tower.train()

    def _train_epoch(self, epoch: int, start_step: int, max_steps: int | None) -> bool:
        """One epoch from `start_step`; False when max_steps stopped it early."""
        steps_per_epoch = self.train_source.steps_per_epoch
        meter = IntervalMeter()
        wait_before = self.train_source.wait_seconds_total
        exchange_before = self.link.stats.seconds()
        self.tower.train()
        step_started = time.perf_counter()
        for step_in_epoch, (images, labels) in enumerate(self.train_source.batches(epoch, start_step), start=start_step):
            seed = dropout_seed(self.job.train.seed, self.topology.pair, self.global_step)
            result = tower_train_step(self.tower, self.link, self.optimizer, images, labels, seed)
            self.global_step += 1
            now = time.perf_counter()
            meter.add_step(result.loss, result.top1_errors, result.images, now - step_started)
            step_started = now
            done_in_epoch = step_in_epoch + 1
            last = done_in_epoch == steps_per_epoch or (max_steps is not None and self.global_step >= max_steps)
            if done_in_epoch % self.job.train.log_every_steps == 0 or last:
                meter.data_wait_seconds = self.train_source.wait_seconds_total - wait_before
                meter.exchange_seconds = self.link.stats.seconds() - exchange_before
                self._say(meter.line(epoch, self.job.train.num_epochs, done_in_epoch, steps_per_epoch, self.learning_rate))
                meter = IntervalMeter()
                wait_before = self.train_source.wait_seconds_total
                exchange_before = self.link.stats.seconds()
            if max_steps is not None and self.global_step >= max_steps:
                return False
        return True

    def _describe_eval(self, results: dict[str, EvalResult]) -> str:
        return " | ".join(
            f"val {r.mode.replace('_', '-')}: top-1 err {r.top1_error:.3f}, top-5 err {r.top5_error:.3f}" for r in results.values()
        )

    def train(self) -> TrainOutcome:
        cfg = self.job.train
        self._say(f"training: {self.topology.describe()}; {self.train_source.steps_per_epoch} steps/epoch of {cfg.batch_size} images")
        results: dict[str, EvalResult] = {}
        epochs_completed = 0
        for epoch in range(cfg.num_epochs):
            finished = self._train_epoch(epoch, 0, cfg.max_steps)
            if finished:
                epochs_completed += 1
            if self.eval_source is not None and (finished or epoch == cfg.num_epochs - 1):
                results = self.evaluate()
                self._say(f"epoch {epoch + 1} {'done' if finished else 'stopped early'}: {self._describe_eval(results)}")
            if not finished:
                break
        if self.eval_source is not None and not results:
            results = self.evaluate()
        if results:
            self._say(f"final: {self._describe_eval(results)}")
        return TrainOutcome(self.global_step, epochs_completed, results)
