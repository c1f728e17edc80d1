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


def topology_from_env(cfg: DistConfig) -> Topology:
    rank = _env_int("RANK")
    world_size = _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 2 or world_size % 2:
        raise LaunchError(f"WORLD_SIZE={world_size}: alexserve needs an even number of ranks (two towers per pair)")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and gpus > local_rank)
    if want_cuda and gpus <= local_rank:
        raise LaunchError(f"device 'cuda' asked for, but LOCAL_RANK={local_rank} and only {gpus} GPU(s) are visible")
    device = torch.device("cuda", local_rank) if want_cuda else torch.device("cpu")
    backend = cfg.backend
    if backend == "auto":
        backend = "nccl" if want_cuda else "gloo"
    if backend == "nccl" and not want_cuda:
        raise LaunchError("backend 'nccl' needs each rank on its own GPU; use gloo on CPU")
    return Topology(rank=rank, world_size=world_size, local_rank=local_rank, device=device, backend=backend)
