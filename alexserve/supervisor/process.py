"""Worker groups as processes: launch torchrun in its own session, kill whole trees, find leftovers.

torchrun starts each worker in a new session of its own, so killing torchrun's
process group is not enough: `kill_tree` freezes the tree (SIGSTOP, so nothing
new is forked while we look), collects every descendant (psutil), and SIGKILLs
them all. A failure part way (psutil cannot read /proc: too many open files)
still SIGKILLs what was frozen, and SIGCONTs what could not be killed: a tree is
never left stopped. Everything the supervisor starts carries `MARK_ENV` in its
environment, so a new supervisor finds and kills what a crashed one left.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

import alexserve
from alexserve.contract.names import ENV_JOB_ID, ENV_SUPERVISOR_PID, ENV_TOKEN

MARK_ENV = (
    "ALEXSERVE_SUPERVISED_BY"  # set only in the environment of what the supervisor starts: leftovers can be found
)
WORKER_MODULE = "alexserve.worker"
_GONE = (psutil.NoSuchProcess, psutil.AccessDenied)  # ZombieProcess is a NoSuchProcess


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_args(
    config_path: Path, rdzv_port: int, worker_module: str = WORKER_MODULE, nproc_per_node: int = 2
) -> list[str]:
    return [
        f"--nproc_per_node={nproc_per_node}",
        "--max-restarts=0",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{rdzv_port}",
        "-m",
        worker_module,
        "--config",
        str(config_path),
        "--resume",
    ]


def launch_worker_group(
    config_path: Path, log_path: Path, env: dict[str, str], worker_module: str = WORKER_MODULE, nproc_per_node: int = 2
) -> subprocess.Popen:
    """torchrun (through the die-with-parent launcher) in a new session, output appended to `log_path`."""
    full_env = dict(os.environ)
    full_env.pop(ENV_TOKEN, None)  # the control token is the supervisor's; workers show their job's channel secret
    full_env.update(env)
    # The workers must import this very alexserve, installed or not.
    package_root = str(Path(alexserve.__file__).resolve().parent.parent)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, full_env.get("PYTHONPATH", "")) if p)
    full_env[ENV_SUPERVISOR_PID] = str(os.getpid())
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    launcher_args = torchrun_args(config_path, free_tcp_port(), worker_module, nproc_per_node)
    argv = [sys.executable, "-m", "alexserve.supervisor.launcher", *launcher_args]
    with open(log_path, "ab") as log:
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"[alexserve supervisor] {when} launch: torchrun {' '.join(launcher_args)}\n".encode())
        log.flush()
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
            close_fds=True,
        )


def _descendants(root: psutil.Process) -> list[psutil.Process]:
    try:
        return root.children(recursive=True)
    except _GONE:
        return []


def _suspend(processes: Iterable[psutil.Process], frozen: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.suspend()  # SIGSTOP: a frozen process forks nothing new while the tree is collected
            frozen.append(process)
        except _GONE:
            pass


def _kill(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    """SIGKILLs each process; the ones that could not be signalled (not gone, yet the kill failed)."""
    missed = []
    for process in processes:
        try:
            process.kill()  # SIGKILL; psutil checks the pid was not reused meanwhile
        except _GONE:
            pass
        except OSError:
            missed.append(process)
    return missed


def _kill_or_thaw(frozen: list[psutil.Process]) -> None:
    """After a failure part way: SIGKILLs what was frozen, SIGCONTs what could not be killed (never left stopped)."""
    for process in _kill(frozen):
        for sig in (signal.SIGKILL, signal.SIGCONT):  # bare signals need no /proc reads; frozen by us just now
            try:
                os.kill(process.pid, sig)
                break
            except OSError:
                pass


def kill_tree(proc: subprocess.Popen, wait_seconds: float = 10.0) -> int | None:
    """Freezes torchrun and every process below it, then SIGKILLs them all; returns torchrun's exit status."""
    try:
        root = psutil.Process(proc.pid)
    except _GONE:  # already reaped: its workers, if any, are no longer below it (kill_job_processes finds them)
        root = None
    if root is not None:
        frozen: list[psutil.Process] = []
        try:
            if proc.poll() is None:
                _suspend([root], frozen)
            tree = _descendants(root)
            _suspend(tree, frozen)
            tree = list(dict.fromkeys(tree + _descendants(root)))  # anything forked before the freeze
            _kill_or_thaw(list(dict.fromkeys([root, *tree, *frozen])))
        except BaseException:
            _kill_or_thaw(frozen)
            raise
    try:
        return proc.wait(timeout=wait_seconds)
    except subprocess.TimeoutExpired:
        return None


def _marked(state_dir: Path, job_id: str | None = None) -> list[psutil.Process]:
    """Processes (not this one, not zombies) whose environment says a supervisor of `state_dir` started them."""
    mark = str(Path(state_dir).resolve())
    found = []
    for candidate in psutil.process_iter():
        if candidate.pid == os.getpid():
            continue
        try:
            environ = candidate.environ()
            if environ.get(MARK_ENV) != mark or (job_id is not None and environ.get(ENV_JOB_ID) != job_id):
                continue
            if candidate.status() == psutil.STATUS_ZOMBIE:  # dead already; its parent reaps it
                continue
        except _GONE:
            continue
        found.append(candidate)
    return found


def marked_processes(state_dir: Path, job_id: str | None = None) -> list[int]:
    """Live processes a supervisor of `state_dir` started (for `job_id`, or all)."""
    return [process.pid for process in _marked(state_dir, job_id)]


def kill_leftovers(state_dir: Path, job_id: str | None = None) -> list[int]:
    """Freezes, then SIGKILLs the processes a supervisor of `state_dir` started (for `job_id`, or all); their pids."""
    frozen: list[psutil.Process] = []
    try:
        found = _marked(state_dir, job_id)
        _suspend(found, frozen)
        found = list(dict.fromkeys(found + _marked(state_dir, job_id)))  # forked before the freeze
        _kill_or_thaw(found)
    except BaseException:
        _kill_or_thaw(frozen)
        raise
    return [process.pid for process in found]


def kill_job_processes(state_dir: Path, job_id: str) -> list[int]:
    """After a group's torchrun exited: SIGKILLs any of that job's processes still alive; their pids."""
    found = _marked(state_dir, job_id)
    _kill(found)
    return [process.pid for process in found]
