"""Helpers for the supervisor tests: a real supervisor process on free ports, torn down on every path.

No test functions live here. End-to-end tests run the real worker
(`alexserve.worker`) under real torchrun; ALEXSERVE_TEST_FAKE_WORKER=1 swaps in
tests/helpers/fake_worker.py for quick iteration on the supervisor alone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from alexserve.supervisor.client import Client, SupervisorUnreachable
from alexserve.supervisor.process import kill_leftovers, marked_processes

REPO = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1]  # on PYTHONPATH, so `helpers.*` imports in child processes
USE_FAKE_WORKER = os.environ.get("ALEXSERVE_TEST_FAKE_WORKER") == "1"

# The real worker at its smallest: about 50 ms per step on two CPU cores, 32 steps per epoch,
# the plateau schedule kept from ending the run early, ten-crop evaluation skipped.
TINY_CONFIG = {
    "model": {"num_classes": 10, "width": 0.0625, "input_size": 63, "init_scheme": "he"},
    "data": {"source": "generated", "generated_train_images": 256, "generated_val_images": 16, "num_workers": 0},
    "optim": {"max_lr_reductions": 20, "plateau_patience": 100},
    "train": {
        "batch_size": 8,
        "num_epochs": 1000,
        "max_steps": 40,
        "log_every_steps": 1,
        "ten_crop_every_epochs": 1000,
    },
    "dist": {"backend": "gloo", "device": "cpu", "timeout_seconds": 30},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_spec(max_steps: int, name: str = "tiny", max_restarts: int = 2, **train) -> dict:
    config = {k: dict(v) for k, v in TINY_CONFIG.items()}
    config["train"].update(max_steps=max_steps, **train)
    return {"name": name, "max_restarts": max_restarts, "config": config}


def supervisor_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(TESTS), env.get("PYTHONPATH", "")) if p)
    env.pop("ALEXSERVE_TOKEN", None)
    env.update(extra)
    return env


@dataclass
class RunningSupervisor:
    proc: subprocess.Popen
    state_dir: Path
    control: str
    metrics_port: int
    log_path: Path
    client: Client

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def job_log(self, job_id: str) -> str:
        path = self.state_dir / "jobs" / job_id / "worker.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else "(no worker log)"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_supervisor(
    state_dir: Path,
    *extra_args: str,
    token: str | None = None,
    ready_timeout: float = 20.0,
    control_port: int | None = None,
    metrics_port: int | None = None,
    env_extra: dict | None = None,
    control_host: str = "127.0.0.1",
) -> RunningSupervisor:
    control_port = control_port or free_port()
    control = f"tcp://127.0.0.1:{control_port}"
    metrics_port = metrics_port or free_port()
    args = [
        sys.executable,
        "-m",
        "alexserve.supervisor",
        "--state-dir",
        str(state_dir),
        "--control",
        f"tcp://{control_host}:{control_port}",
        "--metrics-port",
        str(metrics_port),
        "--restart-delay",
        "0.2",
        *extra_args,
    ]
    if USE_FAKE_WORKER:
        args += ["--worker-module", "helpers.fake_worker"]
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir.parent / f"supervisor-{time.monotonic_ns()}.log"
    env = supervisor_env(**(env_extra or {}))
    if token is not None:
        env["ALEXSERVE_TOKEN"] = token
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=state_dir.parent)
    sup = RunningSupervisor(
        proc, state_dir, control, metrics_port, log_path, Client(control, token, timeout_seconds=5.0)
    )
    deadline = time.monotonic() + ready_timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"supervisor exited with {proc.returncode} at start:\n{sup.log()}")
        try:
            Client(control, token, timeout_seconds=0.5).call("ping")
            return sup
        except SupervisorUnreachable:
            if time.monotonic() > deadline:
                sup.stop(signal.SIGKILL)
                pytest.fail(f"supervisor not answering after {ready_timeout}s:\n{sup.log()}")


def cleanup(sup: RunningSupervisor) -> list[int]:
    """Stops the supervisor and kills anything it started; returns pids that had to be killed here."""
    sup.stop()
    left = kill_leftovers(sup.state_dir)
    return left


@pytest.fixture
def supervisor(tmp_path):
    sup = start_supervisor(tmp_path / "state")
    try:
        yield sup
    finally:
        left = cleanup(sup)
        assert not left, f"worker processes outlived the supervisor: {left}"


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def worker_pids(state_dir: Path, rank: int) -> list[int]:
    """Worker processes of `rank` started by the supervisor of state_dir (torchrun's children)."""
    found = []
    for pid in marked_processes(state_dir):
        try:
            process = psutil.Process(pid)
            environ, cmdline = process.environ(), " ".join(process.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        is_launcher = "alexserve.supervisor.launcher" in cmdline or "torch.distributed.run" in cmdline
        if environ.get("RANK") == str(rank) and not is_launcher:
            found.append(pid)
    return found


def prometheus_binaries() -> tuple[str | None, str | None]:
    return shutil.which("prometheus"), shutil.which("promtool")


def require_prometheus() -> tuple[str, str]:
    """The prometheus and promtool paths; a failure in CI when missing, a skip elsewhere."""
    prometheus, promtool = prometheus_binaries()
    if prometheus and promtool:
        return prometheus, promtool
    reason = "Prometheus is not installed (apt-get install -y prometheus)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must install it (.ci/run)")
    pytest.skip(reason)
