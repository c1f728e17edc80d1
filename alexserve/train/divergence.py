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

Agreement between ranks. Both towers of a pair compute the same loss from the
same full logits, so a pair always stops at the same step. Pairs (data
parallel) train on different batches and see different losses; if one pair
stopped while the others went on, those would wait in the gradient all-reduce
until the group timeout. With several pairs every rank therefore judges the
worst loss of all pairs (`worst_loss_across_pairs`, one 2-number all-reduce per
step), and every rank stops at the same step.

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


def worst_loss_across_pairs(loss: float, topology: Topology) -> float:
    """The loss every rank must judge: this pair's own with one pair, else the worst of all pairs (NaN wins)."""
    if topology.num_pairs == 1:
        return loss  # both towers of the pair hold this very value
    # MAX would not carry a NaN reliably, so it travels as a flag beside the largest non-NaN loss.
    values = torch.tensor(
        [1.0 if math.isnan(loss) else 0.0, -math.inf if math.isnan(loss) else loss],
        dtype=torch.float64,
        device=topology.device,
    )
    with peers_required(topology.rank, "the all-reduce of the divergence check"):
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return math.nan if values[0].item() > 0 else values[1].item()


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
