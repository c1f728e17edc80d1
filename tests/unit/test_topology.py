"""Issue 24, item 3: `dist.device` is decided once per host, from LOCAL_WORLD_SIZE and the GPUs visible.

The GPU count is mocked: `torch.cuda.device_count` and `is_available` are all that `topology_from_env` asks.
"""

from __future__ import annotations

import pytest
import torch

from alexserve.config import DistConfig
from alexserve.parallel.topology import LaunchError, topology_from_env


@pytest.fixture
def gpus(monkeypatch):
    def visible(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return visible


def ranks_of_one_host(monkeypatch, cfg: DistConfig, local_world_size: int = 2):
    """The topology every rank of one host gets (RANK = LOCAL_RANK, one host)."""
    out = []
    for rank in range(local_world_size):
        for name, value in dict(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=local_world_size).items():
            monkeypatch.setenv(name, str(value))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world_size))
        out.append(topology_from_env(cfg))
    return out


@pytest.mark.parametrize("count", [1, 3])
def test_auto_with_fewer_gpus_than_local_ranks_puts_every_rank_on_the_same_device(monkeypatch, gpus, count):
    gpus(count)
    ranks = ranks_of_one_host(monkeypatch, DistConfig(device="auto"), local_world_size=4 if count == 3 else 2)
    assert {(t.device.type, t.backend) for t in ranks} == {("cpu", "gloo")}, [t.describe() for t in ranks]
    assert all(t.notice and "LOCAL_WORLD_SIZE" in t.notice for t in ranks)


def test_auto_with_a_gpu_per_local_rank_puts_rank_r_on_gpu_r(monkeypatch, gpus):
    gpus(2)
    ranks = ranks_of_one_host(monkeypatch, DistConfig(device="auto"))
    assert [(t.device, t.backend) for t in ranks] == [(torch.device("cuda", r), "nccl") for r in (0, 1)]
    assert all(t.notice is None for t in ranks)


def test_auto_without_gpus_is_cpu_without_a_notice(monkeypatch, gpus):
    gpus(0)
    ranks = ranks_of_one_host(monkeypatch, DistConfig(device="auto"))
    assert {(t.device.type, t.backend, t.notice) for t in ranks} == {("cpu", "gloo", None)}


def test_cuda_with_fewer_gpus_than_local_ranks_is_refused_by_every_rank_naming_both_numbers(monkeypatch, gpus):
    gpus(1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    for rank in (0, 1):  # rank 0 too: it must not go ahead on cuda:0 and wait for a peer that refused
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        with pytest.raises(LaunchError, match=r"LOCAL_WORLD_SIZE=2 .* 1 GPU\(s\)"):
            topology_from_env(DistConfig(device="cuda"))


def test_a_local_rank_outside_the_local_world_is_refused(monkeypatch, gpus):
    gpus(0)
    for name, value in dict(RANK=2, LOCAL_RANK=2, WORLD_SIZE=4, LOCAL_WORLD_SIZE=2).items():
        monkeypatch.setenv(name, str(value))
    with pytest.raises(LaunchError, match="LOCAL_RANK=2"):
        topology_from_env(DistConfig(device="cpu"))
