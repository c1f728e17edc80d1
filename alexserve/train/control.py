"""Supervisor commands, acted on by every rank at the same step.

Global rank 0 polls the supervisor; the command is then broadcast to all ranks
before the step starts, so pause, stop and checkpoint-now never catch one
tower inside an exchange while the other waits for it.

Never a device sync for it: the command travels in a CPU tensor over gloo (the
default group on CPU; on NCCL a gloo side group made for it), and it is shared
only every `every_steps` steps (at most every 10 steps or progress line, the
lesser), so a step in between meets no collective at all. While paused, the
ranks meet at a broadcast every `PAUSE_POLL_SECONDS`.

The same collective carries the preemption flag (preemption.py): an all-reduce
(max) of [command, preempted], so a signal to any one rank stops every rank at
the same step. Without a supervisor and without preemption signals there is
nothing to share: no collective is spent on it and every step goes ahead.
"""

from __future__ import annotations

import enum
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from alexserve.contract.telemetry import CommandSource, NoCommands
from alexserve.contract.worker_messages import COMMAND_KINDS
from alexserve.parallel.exchange import peers_required
from alexserve.parallel.watchdog import LastPoint
from alexserve.train.preemption import PreemptionFlag

PAUSE_POLL_SECONDS = 0.2
# The most steps between two looks at the supervisor's commands (pause, stop, checkpoint-now).
MAX_STEPS_BETWEEN_POLLS = 10


# What a rank does at a boundary: NONE (0), or one member per command kind of the contract, in its order
# (PAUSE, RESUME, STOP, CHECKPOINT_NOW): a new command kind gets its action here with no second list to update.
Action = enum.IntEnum("Action", ["NONE", *(kind.upper() for kind in COMMAND_KINDS)], start=0)

_BY_KIND = {kind: Action[kind.upper()] for kind in COMMAND_KINDS}
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
        preemption: PreemptionFlag | None = None,
        where: LastPoint | None = None,
    ):
        self.source, self.is_primary, self.every_steps = source, is_primary, every_steps
        # The peer watchdog's record: a peer lost while this rank waits in one of these collectives is reported
        # there, not at the last exchange point.
        self.where = where if where is not None else LastPoint()
        self.preemption = preemption
        self.preempted = False  # every rank's view, once shared: some rank was asked to stop
        # Every rank is given the same kind of source (the supervisor started them all, or none) and the same
        # dist.preempt_signals.
        self.shared = not isinstance(source, NoCommands) or preemption is not None
        self.group = None
        if self.shared and backend != "gloo":
            self.group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_seconds))
        self.buffer = torch.zeros(2, dtype=torch.int64)  # on the CPU: reading it is no device sync

    def _poll(self, meeting: str) -> Action:
        command = self.source.poll_command() if self.is_primary else None
        # Only rank 0 polls, every other rank offers NONE (0): the max is rank 0's command.
        self.buffer[0] = _BY_KIND[command.kind] if command is not None else Action.NONE
        self.buffer[1] = int(self.preemption is not None and self.preemption.requested)
        self.where.set_meeting(meeting)
        # gloo's error, if it comes before the heartbeat's verdict, names the same place.
        with peers_required(dist.get_rank(), f"{meeting} (sharing supervisor commands and preemption)"):
            dist.all_reduce(self.buffer, op=dist.ReduceOp.MAX, group=self.group)
        self.preempted = self.preempted or bool(self.buffer[1].item())
        return Action(int(self.buffer[0].item()))

    def next_action(self, global_step: int) -> Action:
        """The command every rank acts on before step `global_step` (NONE when unsupervised, or between polls)."""
        if not self.shared or global_step % self.every_steps:
            return Action.NONE
        return self._poll(f"the command boundary before step {global_step}")

    def wait_while_paused(self) -> Action:
        """Blocks all ranks until resume or stop (or preemption: STOP) arrives; returns which."""
        while True:
            time.sleep(PAUSE_POLL_SECONDS)
            action = self._poll("the command boundary of a pause")
            if self.preempted:
                return Action.STOP
            if action in (Action.RESUME, Action.STOP):
                return action

    def meet(self, why: str) -> None:
        """Every rank waits here for every other (after a preemption checkpoint: rank 0 commits it last)."""
        self.where.set_meeting(why)
        with peers_required(dist.get_rank(), why):
            dist.barrier(group=self.group)
