"""Preemption: a scheduler's signal becomes a flag, acted on at the next command boundary.

Slurm sends SIGUSR1 (`--signal=B:USR1@GRACE`) or SIGTERM, Kubernetes SIGTERM, and both kill the job after a
grace period. The handler only sets a flag: the signal may land while a tower waits in an exchange, so
nothing is done there. The flag travels with the supervisor's commands (control.py: an all-reduce, so a
signal to any one rank stops every rank at the same step), the trainer checkpoints, and the worker exits
PREEMPTED. A repeated signal changes nothing; if the grace period runs out mid-checkpoint, the store's
commit rule leaves the previous checkpoint the newest one.
"""

from __future__ import annotations

import os
import signal
import time


class PreemptionFlag:
    """Set by any of `signal_names` (installed in the main thread); `requested` once one has arrived."""

    def __init__(self, signal_names: list[str] | tuple[str, ...]):
        self.signal_names = tuple(signal_names)
        self.received: str | None = None
        self.received_at: float | None = None

    @classmethod
    def install(cls, signal_names: list[str] | tuple[str, ...]) -> PreemptionFlag | None:
        """Installs the handlers; None when there are no signals to catch (nothing then needs sharing)."""
        if not signal_names:
            return None
        flag = cls(signal_names)
        for name in flag.signal_names:
            signal.signal(getattr(signal, name), flag._on_signal)
        return flag

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _on_signal(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received, self.received_at = name, time.monotonic()
            # os.write, not print: the signal may land inside a print, and buffered writers refuse re-entry.
            os.write(2, f"{name}: checkpointing at the next command boundary, then exiting PREEMPTED\n".encode())
