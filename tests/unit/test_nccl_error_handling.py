"""Issue 24, item 9: TORCH_NCCL_ASYNC_ERROR_HANDLING is 2 wherever alexserve starts NCCL workers and the user set
nothing; a value the user set is kept, and the primary rank says what it means for a dead peer."""

from __future__ import annotations

import inspect
import os

import pytest
import torch
import torch.distributed as dist

from alexserve import launch
from alexserve.contract.nccl_errors import (
    ENV_NCCL_ASYNC_ERROR_HANDLING as VAR,
)
from alexserve.contract.nccl_errors import (
    error_handling_notice,
    set_default_error_handling,
)
from alexserve.parallel import process_group as process_group_module
from alexserve.parallel.topology import Topology


@pytest.fixture
def unset(monkeypatch):
    """The variable unset for the test and restored afterwards (the code under test writes os.environ)."""
    monkeypatch.setenv(VAR, "placeholder")  # records the original value for the undo
    monkeypatch.delenv(VAR)


def test_torchrun_sets_one_when_the_variable_is_unset():
    """The premise: torch 2.13's agent gives its workers os.getenv(VAR, "1"), so alexserve must set it first."""
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

    source = inspect.getsource(LocalElasticAgent._start_workers)
    assert f'"{VAR}": os.getenv(\n                    "{VAR}", str(1)' in source


def test_the_default_is_two_and_a_set_value_is_kept(unset):
    env: dict[str, str] = {}
    set_default_error_handling(env)
    assert env == {VAR: "2"} and error_handling_notice(env) is None
    for value in ("0", "1", "3"):
        env = {VAR: value}
        set_default_error_handling(env)
        assert env == {VAR: value}


@pytest.mark.parametrize(
    ("value", "says"),
    [("1", "aborts the communicators and ends the process by SIGABRT"), ("3", "ends the process by SIGABRT")],
)
def test_a_tear_down_value_is_explained(value, says):
    notice = error_handling_notice({VAR: value})
    assert f"{VAR}={value}" in notice and says in notice and "exit 3" in notice and "alexserve.launch" in notice


def test_no_handling_is_explained():
    assert "never ended" in error_handling_notice({VAR: "0"})


def topology(backend: str, rank: int = 0) -> Topology:
    return Topology(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"), backend=backend)


class Stop(Exception):
    pass


@pytest.fixture
def init_seen(monkeypatch):
    """What the variable is when the group would be made; the group is not made."""
    seen = []

    def init_process_group(**_kwargs):
        seen.append(os.environ.get(VAR))
        raise Stop

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    return seen


def enter(topology: Topology) -> None:
    with pytest.raises(Stop), process_group_module.process_group(topology, timeout_seconds=5):
        pass


def test_an_nccl_group_is_made_with_two_when_unset(unset, init_seen, capsys):
    enter(topology("nccl"))
    assert init_seen == ["2"] and "note:" not in capsys.readouterr().err


def test_an_nccl_group_keeps_torchruns_one_and_the_primary_says_so(monkeypatch, init_seen, capsys):
    monkeypatch.setenv(VAR, "1")
    enter(topology("nccl", rank=0))
    enter(topology("nccl", rank=1))
    assert init_seen == ["1", "1"]
    assert capsys.readouterr().err.count(f"note: {VAR}=1") == 1  # rank 0 only


def test_a_gloo_group_leaves_the_variable_alone(unset, init_seen):
    enter(topology("gloo"))
    assert init_seen == [None]


def test_alexserve_launch_sets_it_before_torchrun_starts_the_workers(unset, monkeypatch):
    seen = []
    monkeypatch.setattr(launch.torchrun, "run", lambda _args: seen.append(os.environ.get(VAR)))
    monkeypatch.setattr(launch.signal, "signal", lambda *_args: None)  # keep this process's handlers
    assert launch.main(["--standalone", "--nproc-per-node=2", "-m", "alexserve.worker"]) == 0
    assert seen == ["2"]


def test_the_supervisors_launcher_sets_it_before_torchrun(unset, monkeypatch):
    from alexserve.supervisor import launcher

    seen = []
    monkeypatch.setattr(launcher, "die_with_parent", lambda _pid: None)
    monkeypatch.setattr(launcher.runpy, "run_module", lambda *_a, **_k: seen.append(os.environ.get(VAR)))
    monkeypatch.setattr(launcher.sys, "argv", ["launcher", "-m", "alexserve.worker"])
    launcher.main()
    assert seen == ["2"]
