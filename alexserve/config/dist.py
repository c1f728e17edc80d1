"""`DistConfig`: how the two towers find each other."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alexserve.config.strict_model import StrictModel


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
