"""Worker groups as processes: launch torchrun in its own session, kill whole trees, find leftovers.

torchrun starts each worker in a new session of its own, so killing torchrun's
process group is not enough: `kill_tree` freezes the tree (SIGSTOP, so nothing
new is forked while we look), collects every descendant from /proc, and
SIGKILLs them all.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import alexserve
from alexserve.contract.names import ENV_SUPERVISOR_PID

MARK_ENV = "ALEXSERVE_SUPERVISED_BY"  # set only in the environment of what the supervisor starts: leftovers can be found


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WORKER_MODULE = "alexserve.worker"


def torchrun_args(config_path: Path, rdzv_port: int, worker_module: str = WORKER_MODULE, nproc_per_node: int = 2) -> list[str]:
    return [
        f"--nproc_per_node={nproc_per_node}", "--max-restarts=0", "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{rdzv_port}", "-m", worker_module, "--config", str(config_path), "--resume",
    ]


def launch_worker_group(config_path: Path, log_path: Path, env: dict[str, str], worker_module: str = WORKER_MODULE,
                        nproc_per_node: int = 2) -> subprocess.Popen:
    """torchrun (through the die-with-parent launcher) in a new session, output appended to `log_path`."""
    full_env = dict(os.environ)
    full_env.update(env)
    # The workers must import this very alexserve, installed or not.
    package_root = str(Path(alexserve.__file__).resolve().parent.parent)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, full_env.get("PYTHONPATH", "")) if p)
    full_env[ENV_SUPERVISOR_PID] = str(os.getpid())
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    argv = [sys.executable, "-m", "alexserve.supervisor.launcher", *torchrun_args(config_path, free_tcp_port(), worker_module, nproc_per_node)]
    with open(log_path, "ab") as log:
        log.write(f"[alexserve supervisor] {time.strftime('%Y-%m-%d %H:%M:%S')} launch: torchrun "
                  f"{' '.join(argv[3:])}\n".encode())
        log.flush()
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=full_env, start_new_session=True, close_fds=True)


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) >= 2:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """pid's children, grandchildren, ... (Linux /proc); empty elsewhere."""
    if not os.path.isdir("/proc"):
        return []
    children = _proc_children()
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_tree(proc: subprocess.Popen, wait_seconds: float = 10.0) -> int | None:
    """SIGKILLs torchrun and every process below it; returns torchrun's exit status."""
    if proc.poll() is None:
        _signal(proc.pid, signal.SIGSTOP)
    tree = descendants(proc.pid)
    for pid in tree:
        _signal(pid, signal.SIGSTOP)
    tree = list(dict.fromkeys(tree + descendants(proc.pid)))  # anything forked before the freeze
    for pid in [proc.pid, *tree]:
        _signal(pid, signal.SIGKILL)
    try:
        return proc.wait(timeout=wait_seconds)
    except subprocess.TimeoutExpired:
        return None


def marked_processes(state_dir: Path, job_id: str | None = None) -> list[int]:
    """Processes (not this one) whose environment says a supervisor of `state_dir` started them (for `job_id`)."""
    if not os.path.isdir("/proc"):
        return []
    mark = f"{MARK_ENV}={Path(state_dir).resolve()}".encode()
    job_mark = f"ALEXSERVE_JOB_ID={job_id}".encode() if job_id is not None else None
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        variables = environ.split(b"\0")
        if mark in variables and (job_mark is None or job_mark in variables):
            found.append(int(entry.name))
    return found


def kill_leftovers(state_dir: Path, job_id: str | None = None) -> list[int]:
    """SIGKILLs the processes a supervisor of `state_dir` started (for `job_id`, or all); returns their pids."""
    pids = marked_processes(state_dir, job_id)
    for pid in pids:
        _signal(pid, signal.SIGSTOP)
    pids = list(dict.fromkeys(pids + marked_processes(state_dir, job_id)))
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    return pids


def kill_job_processes(state_dir: Path, job_id: str) -> list[int]:
    """After a group's torchrun exited: SIGKILLs any of that job's processes still alive (zombies aside)."""
    alive = []
    for pid in marked_processes(state_dir, job_id):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        if stat[stat.rfind(")") + 2:].split()[:1] != ["Z"]:
            alive.append(pid)
    for pid in alive:
        _signal(pid, signal.SIGKILL)
    return alive
