"""Process trees (psutil): kill_tree reaches workers in sessions of their own; marked leftovers are found and killed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from alexserve.contract.names import ENV_JOB_ID
from alexserve.supervisor.process import MARK_ENV, kill_job_processes, kill_leftovers, kill_tree, marked_processes

pytestmark = pytest.mark.timeout(60)

# A stand-in for torchrun: starts a "worker" in a session of its own (as torchrun does), prints its pid, waits.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)
"""


def start_tree(env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    return proc, int(proc.stdout.readline())


def gone(pid: int, timeout: float = 10.0) -> bool:
    """True once pid has exited (a zombie counts: it is dead, its parent reaps it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_kill_tree_kills_the_worker_in_its_own_session():
    proc, worker = start_tree()
    try:
        code = kill_tree(proc)
        assert code == -9
        assert gone(worker), "the worker outlived kill_tree"
    finally:
        proc.kill()
        proc.wait()


def test_kill_tree_of_an_exited_process_returns_its_status():
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    assert kill_tree(proc) == 3


def test_marked_processes_are_found_per_state_dir_and_job_then_killed(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    mark = {MARK_ENV: str(state.resolve()), ENV_JOB_ID: "job-1"}
    proc, worker = start_tree(mark)
    other, other_worker = start_tree({MARK_ENV: str(tmp_path), ENV_JOB_ID: "job-1"})  # another supervisor's
    try:
        assert set(marked_processes(state)) == {proc.pid, worker}
        assert set(marked_processes(state, "job-1")) == {proc.pid, worker}
        assert marked_processes(state, "job-2") == []
        assert set(kill_leftovers(state)) == {proc.pid, worker}
        assert gone(worker) and gone(proc.pid)
        proc.wait(timeout=10)
        assert marked_processes(state) == []  # the dead are not listed
        assert set(marked_processes(Path(tmp_path))) == {other.pid, other_worker}
        assert set(kill_job_processes(tmp_path, "job-1")) == {other.pid, other_worker}
        assert gone(other_worker)
    finally:
        for p in (proc, other):
            p.kill()
            p.wait()
