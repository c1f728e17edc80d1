"""Supervisor commands, acted on by every rank at the same step.

Global rank 0 polls the supervisor; the command is then broadcast to all ranks
before the next step starts, so pause, stop and checkpoint-now never catch one
tower inside an exchange while the other waits for it. While paused, the ranks
meet at a broadcast every `PAUSE_POLL_SECONDS`, far inside the group timeout.

Without a supervisor every rank has `NoCommands`, so there is nothing to share:
no broadcast is spent on it and every step goes ahead.
"""

from __future__ import annotations

import enum
import time

import torch
import torch.distributed as dist

from alexserve.contract.telemetry import CommandSource, NoCommands
from alexserve.parallel.exchange import peers_required

PAUSE_POLL_SECONDS = 0.2


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


class CommandSync:
    """Shares the command global rank 0 polls from `source` with every rank."""

    def __init__(self, is_primary: bool, device: torch.device, source: CommandSource = _NO_COMMANDS):
        self.source, self.is_primary = source, is_primary
        # Every rank is given the same kind of source (the supervisor started them all, or none).
        self.shared = not isinstance(source, NoCommands)
        self.buffer = torch.zeros(1, dtype=torch.int64, device=device)

    def _poll(self) -> Action:
        command = self.source.poll_command() if self.is_primary else None
        self.buffer.fill_(_BY_KIND[command.kind] if command is not None else Action.NONE)
        with peers_required(dist.get_rank(), "the broadcast of supervisor commands"):
            dist.broadcast(self.buffer, src=0)
        return Action(int(self.buffer.item()))

    def next_action(self) -> Action:
        """The command every rank acts on before the next step (NONE when unsupervised)."""
        return self._poll() if self.shared else Action.NONE

    def wait_while_paused(self) -> Action:
        """Blocks all ranks until resume or stop arrives; returns which. Checkpoint-now while paused is ignored."""
        while True:
            time.sleep(PAUSE_POLL_SECONDS)
            action = self._poll()
            if action in (Action.RESUME, Action.STOP):
                return action
