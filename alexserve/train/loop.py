"""The training loop of one tower process.

Both towers of a pair run this same loop in lockstep: every forward and
backward meets the peer at the exchange points, so the ranks agree on the step
without extra messages. Per epoch: train, evaluate (centre crop, ten crops),
let the plateau schedule set the learning rate, append the history and redraw
its plot, checkpoint. Supervisor commands are taken between steps (control.py); reports go to a
telemetry sink (contract/telemetry.py) that may be the do-nothing one.

The step path reads nothing back from the device. Its loss and error counts are summed on the device
(progress.py), and the divergence guard judges each loss there (divergence.py); both are read when a
progress line, a report, a checkpoint or an evaluation is due, never in between (on CPU, where a read costs
nothing, the guard is also read after every step). A loss that diverged ends training by raising
`TrainingDiverged` at that read, before anything is logged or checkpointed after it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from alexserve.checkpoint.run_checkpointer import Position, RunCheckpointer
from alexserve.config import JobConfig
from alexserve.contract.telemetry import CommandSource, NoCommands, NullTelemetry, TelemetrySink, WorkerState
from alexserve.data.source import EvalSource, TrainSource
from alexserve.model import AlexNetTower
from alexserve.model.dropout import dropout_seed
from alexserve.parallel.data_parallel import tower_of
from alexserve.parallel.exchange import PeerExchange
from alexserve.parallel.topology import Topology
from alexserve.train.control import Action, CommandSync, poll_interval
from alexserve.train.divergence import (
    DivergenceMonitor,
    TrainingDiverged,
    chance_warning,
    diverged_message,
    near_chance,
    weights_finite,
)
from alexserve.train.evaluation import EvalResult, evaluate, sum_over_pairs
from alexserve.train.history import EpochRecord, History, plot
from alexserve.train.optimizer import PaperSGD
from alexserve.train.precision import Precision
from alexserve.train.preemption import PreemptionFlag
from alexserve.train.progress import IntervalMeter
from alexserve.train.reporting import eval_summary, interval_summary
from alexserve.train.schedule import PlateauSchedule, warmup_steps
from alexserve.train.step import tower_forward_logits, tower_train_step


@dataclass
class TrainOutcome:
    state: str  # "completed", "stopped" (on request) or "preempted" (by a signal)
    position: Position
    final_eval: dict[str, EvalResult] = field(default_factory=dict)


def print_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class Learner:
    """What learns: the tower, how it meets its peer, how it updates."""

    # The module training calls: the tower, or (several pairs) the tower in DDP across the pairs
    # (parallel/data_parallel.py: replicate_across_pairs).
    model: torch.nn.Module
    exchange: PeerExchange
    optimizer: PaperSGD
    schedule: PlateauSchedule

    @property
    def tower(self) -> AlexNetTower:
        """The tower itself: what is checkpointed and evaluated."""
        return tower_of(self.model)


@dataclass
class TrainerIO:
    """What the trainer reads, where it writes, and who may steer it."""

    train_source: TrainSource
    eval_source: EvalSource
    checkpointer: RunCheckpointer
    history: History | None = None  # global rank 0 only: the other ranks must not open it
    telemetry: TelemetrySink = field(default_factory=NullTelemetry)
    commands: CommandSource = field(default_factory=NoCommands)  # polled by global rank 0, shared with all
    log: Callable[[str], None] = print_to_stderr  # progress lines (global rank 0)
    preemption: PreemptionFlag | None = None  # this rank's signal flag, shared with the commands


class TowerTrainer:
    """`check_divergence_every_step`: read the guard after every step (default: on CPU, where it costs nothing)."""

    def __init__(
        self,
        job: JobConfig,
        topology: Topology,
        learner: Learner,
        io: TrainerIO,
        position: Position | None = None,
        check_divergence_every_step: bool | None = None,
    ):
        self.job, self.topology = job, topology
        self.model, self.tower, self.exchange = learner.model, learner.tower, learner.exchange
        self.optimizer, self.schedule = learner.optimizer, learner.schedule
        self.train_source, self.eval_source = io.train_source, io.eval_source
        self.checkpointer, self.history, self.telemetry, self.log = io.checkpointer, io.history, io.telemetry, io.log
        self.commands = CommandSync(
            topology.is_primary,
            io.commands,
            every_steps=poll_interval(job.train.log_every_steps),
            backend=topology.backend,
            timeout_seconds=job.dist.collective_timeout_seconds,
            preemption=io.preemption,
            where=self.exchange.where,
        )
        self.position = position or Position()
        self.last_eval: dict[str, EvalResult] = {}
        self.divergence = DivergenceMonitor(job.model.classes, job.train.divergence_loss_factor, topology.device)
        if check_divergence_every_step is None:
            check_divergence_every_step = topology.device.type == "cpu"
        self.check_divergence_every_step = check_divergence_every_step
        self.precision = Precision.of(job, topology.device)
        self.warmup_steps = warmup_steps(job.warmup_epochs_used, self.train_source.steps_per_epoch)
        self.optimizer.set_lr(self.schedule.lr)

    # ---- small pieces

    def say(self, line: str) -> None:
        if self.topology.is_primary:
            self.log(line)

    def report_state(self, state: WorkerState) -> None:
        """The group's state, reported once (global rank 0; every rank is at the same step)."""
        if self.topology.is_primary:
            self.telemetry.state(state, self.position.global_step)

    @property
    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def check_divergence(self) -> None:
        """Reads the guard; raises TrainingDiverged on every rank alike (divergence.py says why they agree)."""
        verdict = self.divergence.verdict(self.topology)
        if verdict is not None:
            step, problem = verdict
            # Step `step` (counted from 1) ran at the rate the schedule gave step index step - 1.
            raise self.diverged(problem, step, self.schedule.lr_at_step(step - 1, self.warmup_steps))

    def diverged(self, problem: str, step: int | None = None, learning_rate: float | None = None) -> TrainingDiverged:
        return TrainingDiverged(
            diverged_message(
                problem,
                self.position.global_step if step is None else step,
                self.learning_rate if learning_rate is None else learning_rate,
                self.schedule.lr,
                self.job,
                self.checkpointer.store,
            )
        )

    def checkpoint(self, why: str) -> None:
        self.check_divergence()  # every checkpoint is preceded by a read of the guard
        # A finite loss was computed before the step's update: the weights it left may still be NaN or inf.
        if not weights_finite(self.tower, self.topology):
            raise self.diverged("the weights are no longer finite (the last update blew them up)")
        ref = self.checkpointer.save(self.tower, self.optimizer, self.schedule, self.position)
        if ref is not None:  # global rank 0, once every shard is committed
            self.say(f"checkpoint ({why}) at step {self.position.global_step}: {ref.path}")
            self.telemetry.checkpoint(self.position.global_step)

    def evaluate(self, ten_crop: bool) -> dict[str, EvalResult]:
        self.check_divergence()
        self.tower.eval()

        def logits_of(images: torch.Tensor) -> torch.Tensor:
            with self.precision.autocast():
                return tower_forward_logits(self.tower, self.exchange, self.precision.images(images), None)

        def sum_counts(counts: torch.Tensor) -> torch.Tensor:
            return sum_over_pairs(counts, self.topology)

        try:
            modes = ("center", "ten_crop") if ten_crop else ("center",)
            return {
                mode: evaluate(
                    logits_of,
                    self.eval_source,
                    mode,
                    sum_counts=sum_counts,
                    device=self.topology.device,
                    mirrors=self.job.data.test_time_mirrors,
                )
                for mode in modes
            }
        finally:
            self.tower.train()

    @staticmethod
    def describe_eval(results: dict[str, EvalResult]) -> str:
        return " | ".join(
            f"val {r.mode.replace('_', '-')}: top-1 err {r.top1_error:.3f}, top-5 err {r.top5_error:.3f}"
            for r in results.values()
        )

    # ---- commands

    def take_command(self) -> bool:
        """Acts on the supervisor's command before a step; False when training must stop here."""
        action = self.commands.next_action(self.position.global_step)
        if action == Action.PAUSE:
            self.say(f"paused at step {self.position.global_step}")
            self.report_state("paused")
            while (action := self.commands.wait_while_paused()) == Action.CHECKPOINT_NOW:
                self.checkpoint("requested")
            if action == Action.RESUME:
                self.say(f"resumed at step {self.position.global_step}")
                self.report_state("running")
        if self.commands.preempted:
            return False
        if action == Action.CHECKPOINT_NOW:
            self.checkpoint("requested")
        return action != Action.STOP

    # ---- the loop

    def train_epoch(self) -> str:
        """Runs the rest of the current epoch: 'epoch_done', 'max_steps', 'stopped' or 'preempted'."""
        cfg, pos = self.job.train, self.position
        steps_per_epoch = self.train_source.steps_per_epoch
        meter, totals = IntervalMeter(), IntervalMeter()
        wait_mark = self.train_source.wait_seconds_total
        self.exchange.stats.take()  # evaluation's exchanges are not training's
        self.tower.train()
        self.epoch_totals = totals
        step_started = time.perf_counter()
        for images, labels in self.train_source.batches(pos.epoch, pos.step_in_epoch):
            if not self.take_command():
                return "preempted" if self.commands.preempted else "stopped"
            seed = dropout_seed(cfg.seed, self.topology.pair, pos.global_step)
            self.optimizer.set_lr(self.schedule.lr_at_step(pos.global_step, self.warmup_steps))
            result = tower_train_step(self.model, self.exchange, self.optimizer, images, labels, seed, self.precision)
            pos.global_step += 1
            pos.step_in_epoch += 1
            self.divergence.observe(result.loss, pos.global_step)  # judged on the device; read below
            if self.check_divergence_every_step:
                self.check_divergence()
            now = time.perf_counter()
            meter.add_step(result.loss, result.top1_errors, result.images, now - step_started)
            totals.add_step(result.loss, result.top1_errors, result.images, now - step_started)
            step_started = now
            epoch_done = pos.step_in_epoch == steps_per_epoch
            out_of_steps = cfg.max_steps is not None and pos.global_step >= cfg.max_steps
            if pos.step_in_epoch % cfg.log_every_steps == 0 or epoch_done or out_of_steps:
                if not self.check_divergence_every_step:
                    self.check_divergence()  # before this interval is logged as fine
                exchanged = self.exchange.stats.take()
                meter.data_wait_seconds = self.train_source.wait_seconds_total - wait_mark
                meter.exchange_seconds = sum(e.seconds for e in exchanged.values())
                self.say(meter.line(pos.epoch, cfg.num_epochs, pos.step_in_epoch, steps_per_epoch, self.learning_rate))
                self.telemetry.interval(
                    interval_summary(
                        meter, pos.epoch, pos.global_step, self.learning_rate, exchanged, self.topology.device
                    )
                )
                meter = IntervalMeter()
                wait_mark = self.train_source.wait_seconds_total
            if epoch_done:
                return "epoch_done"
            if out_of_steps:
                return "max_steps"
            if cfg.checkpoint_every_steps and pos.global_step % cfg.checkpoint_every_steps == 0:
                self.checkpoint("periodic")
        return "epoch_done"

    def finish_epoch(self) -> bool:
        """Evaluation, schedule, history, checkpoint; False when the schedule says training is over."""
        pos, totals = self.position, self.epoch_totals
        train_figures = totals.read()
        epoch = pos.epoch
        ten_crop = (epoch + 1) % self.job.train.ten_crop_every_epochs == 0 or epoch + 1 == self.job.train.num_epochs
        results = self.last_eval = self.evaluate(ten_crop)
        self.say(f"epoch {epoch + 1} done: {self.describe_eval(results)}")
        if self.topology.is_primary:
            self.telemetry.evaluation(eval_summary(epoch, pos.global_step, results))
        lr_used, scheduled_lr = self.learning_rate, self.schedule.lr
        self.optimizer.set_lr(self.schedule.step(results["center"].top1_error))
        if self.schedule.lr != scheduled_lr:
            self.say(f"validation error stopped improving: learning rate {scheduled_lr:g} -> {self.schedule.lr:g}")
        if self.history is not None:
            ten = results.get("ten_crop")
            self.history.append(
                EpochRecord(
                    epoch=epoch + 1,
                    step=pos.global_step,
                    train_loss=train_figures.loss,
                    train_top1_error=train_figures.top1_error,
                    val_top1_error=results["center"].top1_error,
                    val_top5_error=results["center"].top5_error,
                    val_top1_error_10crop=ten.top1_error if ten else None,
                    val_top5_error_10crop=ten.top5_error if ten else None,
                    lr=lr_used,
                    epoch_seconds=totals.elapsed,
                    near_chance=near_chance(results["center"].top1_error, self.job.model.classes),
                )
            )
            plot(self.job.train.run_dir)
        pos.epoch, pos.step_in_epoch = epoch + 1, 0
        self.checkpoint("epoch end")
        if self.schedule.should_stop:
            self.say(
                f"the learning rate was reduced {self.job.optim.max_lr_reductions} times and stopped improving: done"
            )
            return False
        return True

    def train(self) -> TrainOutcome:
        cfg, pos = self.job.train, self.position
        self.say(
            f"training: {self.topology.describe()}; {self.train_source.steps_per_epoch} steps/epoch of "
            f"{cfg.batch_size} images; from epoch {pos.epoch + 1} step {pos.step_in_epoch} "
            f"(global step {pos.global_step})"
        )
        self.report_state("running")
        while pos.epoch < cfg.num_epochs and (cfg.max_steps is None or pos.global_step < cfg.max_steps):
            ended = self.train_epoch()
            if ended == "stopped":
                self.checkpoint("stop requested")
                self.report_state("stopped")
                self.say(f"stopped at step {pos.global_step}")
                return TrainOutcome("stopped", pos, self.last_eval)
            if ended == "preempted":
                started = time.perf_counter()
                self.checkpoint("preempted")
                # No rank exits before rank 0 has committed: torchrun stops the group at the first exit.
                self.commands.meet(f"the barrier after the preemption checkpoint at step {pos.global_step}")
                seconds = time.perf_counter() - started
                self.report_state("stopped")
                self.say(
                    f"preempted at step {pos.global_step}: checkpoint committed in {seconds:.1f}s; "
                    "exiting PREEMPTED (75): run again with --resume to continue"
                )
                return TrainOutcome("preempted", pos, self.last_eval)
            if ended == "max_steps":
                self.checkpoint("max_steps reached")
                break
            if not self.finish_epoch():
                break
        if not self.last_eval:
            self.last_eval = self.evaluate(ten_crop=True)
        final = f"final: {self.describe_eval(self.last_eval)}"
        top1 = self.last_eval["center"].top1_error
        if near_chance(top1, self.job.model.classes):  # "completed" alone would hide a net that never learned
            final += f" | {chance_warning(top1, self.job.model.classes, self.job.model.paper_sized)}"
        self.say(final)
        self.report_state("completed")
        return TrainOutcome("completed", pos, self.last_eval)
