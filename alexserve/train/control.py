"""Supervisor commands, acted on by every rank at the same step.

Global rank 0 polls the supervisor; the command is then broadcast to all ranks
before the step starts, so pause, stop and checkpoint-now never catch one
tower inside an exchange while the other waits for it.

Never a device sync for it: the command travels in a CPU tensor over gloo (the
default group on CPU; on NCCL a gloo side group made for it), and it is shared
only every `every_steps` steps (at most every 10 steps or progress line, the
lesser), so a step in between meets no collective at all. While paused, the
ranks meet at a broadcast every `PAUSE_POLL_SECONDS`.

Without a supervisor every rank has `NoCommands`, so there is nothing to share:
no broadcast is spent on it and every step goes ahead.
"""

from __future__ import annotations

import enum
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from alexserve.contract.telemetry import CommandSource, NoCommands
from alexserve.parallel.exchange import peers_required

PAUSE_POLL_SECONDS = 0.2
# The most steps between two looks at the supervisor's commands (pause, stop, checkpoint-now).
MAX_STEPS_BETWEEN_POLLS = 10


class Action(enum.IntEnum):
    NONE = 0
    PAUSE = 1
    RESUME = 2
    STOP = 3
    CHECKPOINT_NOW = 4


_BY_KIND = {
    "pause": Action.PAUSE,
    "resume": Action.RESUME,
    "stop": Action.STOP,
    "checkpoint_now": Action.CHECKPOINT_NOW,
}
_NO_COMMANDS = NoCommands()


def poll_interval(log_every_steps: int) -> int:
    return min(log_every_steps, MAX_STEPS_BETWEEN_POLLS)


class CommandSync:
    """Shares the command global rank 0 polls from `source` with every rank, every `every_steps` steps.

    Collective to construct on NCCL when `source` is a real one (it makes the gloo side group).
    """

    def __init__(
        self,
        is_primary: bool,
        source: CommandSource = _NO_COMMANDS,
        every_steps: int = 1,
        backend: str = "gloo",
        timeout_seconds: float = 1800.0,
    ):
        self.source, self.is_primary, self.every_steps = source, is_primary, every_steps
        # Every rank is given the same kind of source (the supervisor started them all, or none).
        self.shared = not isinstance(source, NoCommands)
        self.group = None
        if self.shared and backend != "gloo":
            self.group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_seconds))
        self.buffer = torch.zeros(1, dtype=torch.int64)  # on the CPU: reading it is no device sync

    def _poll(self) -> Action:
        command = self.source.poll_command() if self.is_primary else None
        self.buffer.fill_(_BY_KIND[command.kind] if command is not None else Action.NONE)
        with peers_required(dist.get_rank(), "the broadcast of supervisor commands"):
            dist.broadcast(self.buffer, src=0, group=self.group)
        return Action(int(self.buffer.item()))

    def next_action(self, global_step: int) -> Action:
        """The command every rank acts on before step `global_step` (NONE when unsupervised, or between polls)."""
        if not self.shared or global_step % self.every_steps:
            return Action.NONE
        return self._poll()

    def wait_while_paused(self) -> Action:
        """Blocks all ranks until resume or stop arrives; returns which. Checkpoint-now while paused is ignored."""
        while True:
            time.sleep(PAUSE_POLL_SECONDS)
            action = self._poll()
            if action in (Action.RESUME, Action.STOP):
                return action
