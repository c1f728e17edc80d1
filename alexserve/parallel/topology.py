"""Where this process sits: rank -> (pair, tower, peer, device, backend).

Ranks come in pairs: rank r runs tower r % 2 of pair r // 2, and its peer (the
other tower of the same pair) is r ^ 1. With one pair that is the paper's
layout; with more pairs (data parallel), tower t of every pair forms the
data-parallel group of tower t.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from alexserve.config import DistConfig


class LaunchError(RuntimeError):
    """The environment cannot run a tower pair (bad world size, missing GPUs...)."""


@dataclass(frozen=True)
class Topology:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    notice: str | None = None  # why the device differs from what was asked for (printed by the primary rank)

    @property
    def tower(self) -> int:
        return self.rank % 2

    @property
    def pair(self) -> int:
        """Data-parallel index of this rank's pair."""
        return self.rank // 2

    @property
    def num_pairs(self) -> int:
        return self.world_size // 2

    @property
    def peer(self) -> int:
        return self.rank ^ 1

    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return (
            f"rank {self.rank}/{self.world_size} (pair {self.pair}, tower {self.tower}) "
            f"on {self.device} via {self.backend}"
        )


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise LaunchError(f"environment variable {name} is not set: start the worker with torchrun")
        return default
    try:
        return int(raw)
    except ValueError:
        raise LaunchError(f"environment variable {name}={raw!r} is not an integer") from None


def node_device_type(cfg: DistConfig, local_world_size: int, gpus: int) -> tuple[str, str | None]:
    """('cuda' or 'cpu', a notice or None): one answer for every rank of this host.

    Decided from the host's numbers only (ranks on it, GPUs it shows), never from a rank's own LOCAL_RANK:
    a rank deciding alone would put rank 0 on cuda:0 with NCCL and rank 1 on the CPU with gloo on a one-GPU host,
    and NCCL's init would then wait for a peer that never comes. Every rank needs a GPU of its own.
    """
    enough = gpus >= local_world_size
    if cfg.device == "cuda" and not enough:
        raise LaunchError(
            f"dist.device 'cuda': LOCAL_WORLD_SIZE={local_world_size} ranks on this host but {gpus} GPU(s) visible; "
            "each rank needs a GPU of its own (use dist.device: cpu, or fewer ranks per host)"
        )
    if cfg.device == "auto" and not enough:
        notice = None
        if gpus:
            notice = (
                f"dist.device 'auto': {gpus} GPU(s) visible for LOCAL_WORLD_SIZE={local_world_size} ranks on this "
                "host, fewer than one per rank: every rank runs on the CPU (gloo)"
            )
        return "cpu", notice
    return ("cpu" if cfg.device == "cpu" else "cuda"), None


def topology_from_env(cfg: DistConfig) -> Topology:
    rank = _env_int("RANK")
    world_size = _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK", rank)
    local_world_size = _env_int("LOCAL_WORLD_SIZE", world_size)  # torchrun sets it; without it: one host
    if world_size < 2 or world_size % 2:
        raise LaunchError(f"WORLD_SIZE={world_size}: alexserve needs an even number of ranks (two towers per pair)")
    if not 0 <= local_rank < local_world_size:
        raise LaunchError(f"LOCAL_RANK={local_rank} is outside LOCAL_WORLD_SIZE={local_world_size}")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device_type, notice = node_device_type(cfg, local_world_size, gpus)
    want_cuda = device_type == "cuda"
    device = torch.device("cuda", local_rank) if want_cuda else torch.device("cpu")
    backend = cfg.backend
    if backend == "auto":
        backend = "nccl" if want_cuda else "gloo"
    if backend == "nccl" and not want_cuda:
        raise LaunchError("backend 'nccl' needs each rank on its own GPU; use gloo on CPU")
    return Topology(
        rank=rank, world_size=world_size, local_rank=local_rank, device=device, backend=backend, notice=notice
    )
