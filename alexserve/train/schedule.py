"""The paper's learning-rate schedule: divide on a validation plateau, stop after the last.

The paper: "The heuristic which we followed was to divide the learning rate by
10 when the validation error rate stopped improving with the current learning
rate. [...] reduced three times prior to termination."

`PlateauSchedule.step(val_error)` is called once per epoch, after validation.
"Stopped improving" has to survive the noise of a finite validation set: one
epoch that is a few images worse must not cost a tenth of the learning rate,
and one that is a hair better must not postpone a due drop forever. So:

- an error below `best * (1 - plateau_min_relative_improvement)` is an
  improvement: it becomes the best and resets the count of epochs without
  improvement (a lower error by less than that still becomes the best, but
  resets nothing);
- when that count reaches `plateau_patience` (3 by default: a real plateau
  lasts; one noisy epoch does not), the learning rate is divided by
  `lr_divisor` and the count restarts, so the new rate gets the same patience
  to beat the best error (the best is kept across reductions: a rate only
  counts as useful if it beats every earlier one);
- when a reduction is due but `max_lr_reductions` have already been made,
  `should_stop` becomes true and the rate is left alone: that is the paper's
  termination after the third reduction's plateau;
- with an `epoch_budget` (`JobConfig.lr_epoch_budget`, below paper size):
  once the epochs left are no more than the reductions not yet made, an
  epoch that did not drop the rate on a plateau drops it anyway, provided
  the current rate has run `patience` epochs (never sooner than the plateau
  rule itself could drop it). The paper ran until its plateaus ended
  training; a run given fewer epochs than that would otherwise end at its
  first, noisiest rate. Nothing changes for a run whose plateaus came in time.

`warmup_factor` is the linear warmup that reduced nets start with (see
`JobConfig.warmup_epochs_used`); it scales this rate within the first epochs.
"""

from __future__ import annotations

import math
from typing import Any

STATE_VERSION = 1

_STATE_KEYS = ("version", "lr", "best_error", "epochs_since_improvement", "num_reductions", "num_epochs", "should_stop")
# Added after version 1 was saved: a state without it ran every epoch so far at its current rate.
_EPOCHS_AT_RATE = "epochs_at_rate"


class PlateauSchedule:
    """Learning rate per epoch from the validation error (see the module docstring)."""

    def __init__(self, optim_cfg, epoch_budget: int | None = None) -> None:
        self.epoch_budget = epoch_budget
        self.divisor = float(optim_cfg.lr_divisor)
        self.patience = int(optim_cfg.plateau_patience)
        self.min_relative_improvement = float(optim_cfg.plateau_min_relative_improvement)
        self.max_reductions = int(optim_cfg.max_lr_reductions)
        self.lr = float(optim_cfg.learning_rate)
        self.best_error = math.inf
        self.epochs_since_improvement = 0
        self.num_reductions = 0
        self.num_epochs = 0
        self.epochs_at_rate = 0
        self.should_stop = False

    def step(self, val_error: float) -> float:
        """Records one epoch's validation error; returns the learning rate for the next epoch.

        A NaN error never counts as an improvement (NaN < best is false), so a
        diverged run drops its rate instead of resetting the patience.
        """
        self.num_epochs += 1
        self.epochs_at_rate += 1
        improved = val_error < self.best_error * (1.0 - self.min_relative_improvement)
        if val_error < self.best_error:
            self.best_error = float(val_error)
        self.epochs_since_improvement = 0 if improved else self.epochs_since_improvement + 1
        reductions_before = self.num_reductions
        if self.epochs_since_improvement >= self.patience and not self.should_stop:
            self._plateau()
        if self.num_reductions == reductions_before and self._budget_demands_reduction():
            self._reduce()
        return self.lr

    def _budget_demands_reduction(self) -> bool:
        if self.epoch_budget is None or self.should_stop or self.epochs_at_rate < self.patience:
            return False
        epochs_left = self.epoch_budget - self.num_epochs
        return 0 < epochs_left <= self.max_reductions - self.num_reductions

    def lr_at_step(self, global_step: int, warmup_steps: int) -> float:
        """The rate for step `global_step` (0-based): the plateau rate, scaled while the warmup ramps up."""
        return self.lr * warmup_factor(global_step, warmup_steps)

    def _plateau(self) -> None:
        if self.num_reductions >= self.max_reductions:
            self.should_stop = True
            return
        self._reduce()

    def _reduce(self) -> None:
        self.lr /= self.divisor
        self.num_reductions += 1
        self.epochs_since_improvement = 0
        self.epochs_at_rate = 0

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers only, so it loads with `torch.load(weights_only=True)` and dumps as JSON (inf aside)."""
        return {
            "version": STATE_VERSION,
            "lr": self.lr,
            "best_error": self.best_error,
            "epochs_since_improvement": self.epochs_since_improvement,
            "num_reductions": self.num_reductions,
            "num_epochs": self.num_epochs,
            "should_stop": self.should_stop,
            _EPOCHS_AT_RATE: self.epochs_at_rate,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a `state_dict()`; divisor, patience and budget stay those of the running config."""
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"PlateauSchedule state lacks {missing}; has {sorted(state)}")
        if state["version"] != STATE_VERSION:
            raise ValueError(f"PlateauSchedule state version {state['version']} is not {STATE_VERSION}")
        self.lr = float(state["lr"])
        self.best_error = float(state["best_error"])
        self.epochs_since_improvement = int(state["epochs_since_improvement"])
        self.num_reductions = int(state["num_reductions"])
        self.num_epochs = int(state["num_epochs"])
        self.should_stop = bool(state["should_stop"])
        self.epochs_at_rate = int(state.get(_EPOCHS_AT_RATE, self.num_epochs))


def warmup_steps(warmup_epochs: float, steps_per_epoch: int) -> int:
    """Steps of the warmup ramp: `warmup_epochs` of this run's epochs."""
    return round(warmup_epochs * steps_per_epoch)


def warmup_factor(global_step: int, warmup_steps: int) -> float:
    """The share of the scheduled rate used at `global_step` (0-based): (step + 1) / warmup_steps, up to 1."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (global_step + 1) / warmup_steps)
