"""`DistConfig`: how the two towers find each other."""

from __future__ import annotations

import signal
from typing import Literal

from pydantic import Field, field_validator

from alexserve.config.strict_model import StrictModel
from alexserve.contract.names import PREEMPT_SIGNALS

# A process cannot catch these, so they cannot ask it to checkpoint.
_UNCATCHABLE = ("SIGKILL", "SIGSTOP")


class DistConfig(StrictModel):
    """How the two towers find each other."""

    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="'auto': NCCL when every rank has its own GPU, gloo otherwise."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto': cuda:LOCAL_RANK when there are enough GPUs, else CPU."
    )
    timeout_seconds: float = Field(
        60.0,
        gt=0.0,
        le=3600.0,
        description="A peer that died or froze (no heartbeat) is declared lost after this many seconds.",
    )
    collective_timeout_seconds: float = Field(
        1800.0,
        gt=0.0,
        le=86400.0,
        description="The process group's own timeout: the longest a collective or exchange waits for a live peer "
        "(a backstop for a deadlock; rank 0 alone may spend this long on a checkpoint or plot). At most 86400.",
    )
    preempt_signals: list[str] = Field(
        default_factory=lambda: list(PREEMPT_SIGNALS),
        description="Signals that ask the job to checkpoint at the next command boundary (at most 10 steps) and "
        "exit PREEMPTED (75): Slurm's --signal=B:USR1@GRACE, the SIGTERM of scancel, requeue and Kubernetes. "
        "Names such as SIGTERM; [] leaves every signal its default action.",
    )

    @field_validator("preempt_signals")
    @classmethod
    def _known_catchable_signals(cls, names: list[str]) -> list[str]:
        for name in names:
            if name in _UNCATCHABLE:
                raise ValueError(f"{name} cannot be caught, so it cannot ask for a checkpoint")
            if not name.startswith("SIG") or not isinstance(getattr(signal, name, None), signal.Signals):
                raise ValueError(f"{name!r} is not a signal name of this system (such as SIGTERM or SIGUSR1)")
        return list(dict.fromkeys(names))
