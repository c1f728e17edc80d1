"""Training that fails says so: a divergence stops it at once, a chance-level result is flagged.

Divergence. A step whose loss is not finite, or is far above where training
started, ends training at that step (`DivergenceGuard`, `TrainingDiverged`):
no more steps, no checkpoint, and the worker exits with its own code
(`WorkerExit.DIVERGED`). "Far above the start" is more than
`train.divergence_loss_factor` times max(ln(num_classes), the first loss this
process saw): ln(num_classes) is the loss of a net that knows nothing, so a
quiet start does not make the limit tiny.

A step's loss is computed with the weights from before that step's update, so
a finite loss does not prove the weights it leaves behind are finite. The loop
therefore also refuses to write a checkpoint of non-finite weights
(`weights_finite`, checked on every rank before each save).

Without a per-step read. Judging a loss on the host costs a device sync per
step on a GPU. So each step's loss is judged on the device
(`DivergenceMonitor.observe`: a few element-wise operations, nothing read),
which remembers the first step that diverged, its loss and the start it was
judged against. `verdict()` reads that back. The loop asks for the verdict
before anything that could present the run as fine: every progress line and
report, every checkpoint, every evaluation, the end of training. On CPU a
read costs nothing, so there it asks after every step as well, and training
stops at the very step that diverged; on a GPU it stops at the next progress
line (at most `train.log_every_steps` steps later), and the message still
names the step that diverged. Either way nothing is logged or checkpointed
after it.

Agreement between ranks. Both towers of a pair compute the same loss from the
same full logits, so a pair always stops at the same step. Pairs (data
parallel) train on different batches and see different losses; if one pair
stopped while the others went on, those would wait in the gradient all-reduce.
With several pairs `verdict()` gathers every rank's record (one all-gather of
three numbers, at the moments it is read) and every rank judges the earliest
diverged step of any pair, so every rank stops at the same step with the same
message.

Chance level. `near_chance` says whether a validation top-1 error is no better
than twice chance accuracy: such a run "completed" but did not learn.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist

from alexserve.checkpoint.store import CheckpointStore
from alexserve.config import JobConfig
from alexserve.parallel.exchange import peers_required
from alexserve.parallel.topology import Topology


class TrainingDiverged(Exception):
    """Training stopped because the loss (or the weights) diverged; the message says where and what to try.

    Not a RuntimeError: code that turns a backend's RuntimeError into PeerLostError must not catch it.
    """


class DivergenceGuard:
    """Judges each step's loss, in order; `problem` returns why training must stop, or None."""

    def __init__(self, num_classes: int, factor: float) -> None:
        if factor <= 1.0:
            raise ValueError(f"divergence factor must be above 1, got {factor}")
        self.uninformed_loss = math.log(num_classes)  # cross-entropy of uniform predictions
        self.factor = factor
        self.first_loss: float | None = None

    @property
    def limit(self) -> float:
        """The largest loss still accepted (before the first loss: from ln(num_classes) alone)."""
        return self.factor * max(self.uninformed_loss, self.first_loss if self.first_loss is not None else 0.0)

    def problem(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return f"the loss is {loss}"
        if self.first_loss is None:
            self.first_loss = loss
        if loss > self.limit:
            start = max(self.uninformed_loss, self.first_loss)
            return (
                f"the loss {loss:.4g} is over {self.factor:g} times its start ({start:.4g}, the larger of "
                f"ln(num_classes) and the first step's loss)"
            )
        return None


class DivergenceMonitor:
    """`DivergenceGuard`'s judgement on the device: `observe` each step's loss, read `verdict()` when needed."""

    def __init__(self, num_classes: int, factor: float, device: torch.device) -> None:
        self.guard = DivergenceGuard(num_classes, factor)  # the limit's definition, and its checks of the factor
        zero = torch.zeros((), dtype=torch.float64, device=device)
        self.have_first = torch.zeros((), dtype=torch.bool, device=device)
        self.first_loss = zero.clone()
        # The first step that diverged (-1: none yet), its loss, and the start that loss was judged against.
        self.bad_step = torch.full((), -1.0, dtype=torch.float64, device=device)
        self.bad_loss, self.bad_start = zero.clone(), zero.clone()

    @torch.no_grad()
    def observe(self, loss: torch.Tensor, step: int) -> None:
        """Judges `loss`, the loss of step `step`, on its device. Reads nothing."""
        loss = loss.detach().double()
        finite = loss.isfinite()
        self.first_loss.copy_(torch.where(self.have_first | ~finite, self.first_loss, loss))
        self.have_first.logical_or_(finite)
        start = self.first_loss.clamp(min=self.guard.uninformed_loss)
        diverged = ~finite | (loss > self.guard.factor * start)
        first_time = diverged & (self.bad_step < 0)
        self.bad_step.copy_(torch.where(first_time, float(step), self.bad_step))
        self.bad_loss.copy_(torch.where(first_time, loss, self.bad_loss))
        self.bad_start.copy_(torch.where(first_time, start, self.bad_start))

    def verdict(self, topology: Topology) -> tuple[int, str] | None:
        """(step, what went wrong) of the earliest divergence on any rank, or None. Collective with several pairs.

        The one read-back of the monitor (a device sync on a GPU).
        """
        record = torch.stack([self.bad_step, self.bad_loss, self.bad_start])
        if topology.num_pairs > 1:
            gathered = [torch.empty_like(record) for _ in range(topology.world_size)]
            with peers_required(topology.rank, "the all-gather of the divergence check"):
                dist.all_gather(gathered, record)
            record = torch.stack(gathered)
        rows = [row for row in record.reshape(-1, 3).tolist() if row[0] >= 0]
        if not rows:
            return None
        step, loss, start = min(rows, key=lambda row: row[0])
        if not math.isfinite(loss):
            return int(step), f"the loss is {loss}"
        return int(step), (
            f"the loss {loss:.4g} is over {self.guard.factor:g} times its start ({start:.4g}, the larger of "
            f"ln(num_classes) and the first step's loss)"
        )


def weights_finite(module: torch.nn.Module, topology: Topology) -> bool:
    """Whether every rank's parameters are all finite (collective: every rank calls it at the same point)."""
    local = torch.stack([p.detach().isfinite().all() for p in module.parameters()]).all()
    bad = torch.tensor([0.0 if local else 1.0], device=topology.device)
    with peers_required(topology.rank, "the check of the weights before a checkpoint"):
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bad.item() == 0.0


def diverged_message(
    problem: str, step: int, learning_rate: float, scheduled_rate: float, job: JobConfig, store: CheckpointStore
) -> str:
    """What happened, the checkpoint to go back to, and what to try.

    `learning_rate` is the rate of the step that diverged; `scheduled_rate` the schedule's, which a warmup
    was still ramping up to: the advice is a tenth of the latter, the rate this run was headed for.
    """
    committed = store.committed()
    if committed:
        newest = committed[-1]
        # A resume restores the schedule saved in the checkpoint, learning rate included: --set cannot lower it.
        checkpoint = (
            f"newest good checkpoint: {newest.path} (step {newest.step}); `--resume` continues from it "
            "at the learning rate saved in it"
        )
    else:
        checkpoint = f"newest good checkpoint: none yet (in {store.directory})"
    rate = f"learning rate {learning_rate:g}"
    if learning_rate < scheduled_rate:
        rate += f" (warming up to {scheduled_rate:g})"
    return (
        f"training diverged at step {step}, {rate}: {problem}. Stopped there, nothing written after it; "
        f"{checkpoint}. Try: a lower learning rate in a new run "
        f"(--set optim.learning_rate={scheduled_rate / 10:g} --set train.run_dir=NEW_DIR); {_data_hint(job)}"
    )


def _data_hint(job: JobConfig) -> str:
    if job.data.source != "folder" or job.data.train_dir is None:
        return "the data is generated (data.source: generated), so look at the settings rather than the data"
    root = Path(job.data.train_dir).parent
    stats = Path(job.data.stats_path) if job.data.stats_path is not None else root / "stats.npz"
    return (
        f"check the data: the prepared tree's stats {stats} (mean image, RGB covariance: finite, in range) "
        f"and {root / 'prepare_report.json'} (converted and rejected files)"
    )


def chance_error(num_classes: int) -> float:
    """Top-1 error of guessing: 1 - 1/num_classes."""
    return 1.0 - 1.0 / num_classes


def near_chance(top1_error: float, num_classes: int) -> bool:
    """True when top-1 accuracy is below twice chance accuracy (error above 1 - 2/num_classes), or not a number.

    With 2 classes twice chance is perfection, so there the bar is halfway from chance to perfect (accuracy 0.75).
    """
    accuracy_needed = min(2.0 / num_classes, (1.0 + 1.0 / num_classes) / 2)
    return not top1_error <= 1.0 - accuracy_needed


# At paper size the defaults are the paper's recipe, which needs many steps to leave its start (on the digits at 224
# pixels it stayed at chance for 220 steps where the reduced-net recipe reached 0.08 error in 88): say how to switch.
PAPER_RECIPE_HINT = (
    "; at paper size the defaults are the paper's N(0, 0.01) init, biases of 1 and raw pixels, which "
    "can stay at chance for hundreds of steps on a small set: try --set model.init_scheme=he "
    "--set 'model.init_bias_one_layers=[]' --set model.input_scaling=unit --set optim.warmup_epochs=1 "
    '(README, "Departures")'
)


def chance_warning(top1_error: float, num_classes: int, paper_sized: bool = False) -> str:
    return (
        f"WARNING: validation top-1 error {top1_error:.3f} is at chance level for {num_classes} classes "
        f"(guessing: {chance_error(num_classes):.3f}): the net did not learn; try a lower learning rate "
        "(optim.learning_rate), more epochs, and check the data (labels, stats.npz, prepare_report.json)"
        + (PAPER_RECIPE_HINT if paper_sized else "")
    )
