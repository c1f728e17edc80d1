"""Issue 13, failures 2, 3 and 6, by injection: failed writes, half-open HTTP, forged and flooded
worker messages, and the log noise of unauthenticated requests.

A real `Supervisor` runs in this process on loopback ports (`start()`, then
`serve_once` by hand); the faults are injected with monkeypatch: `os.replace`
(a failing rename) and `open` in alexserve.durable (too many open files, a
read-only state folder), psutil failing part way through a kill.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest
import zmq

import alexserve.durable
from alexserve.contract.supervisor_channel import SupervisorChannel
from alexserve.contract.worker_messages import CheckpointEvent, Hello, StateEvent, StepReport
from alexserve.supervisor import http_endpoint, process
from alexserve.supervisor.channels import REPORT_QUEUE_MESSAGES
from alexserve.supervisor.jobs import JobRecord
from alexserve.supervisor.lifecycle import JobRuntime
from alexserve.supervisor.service import ServerOptions, Supervisor
from alexserve.supervisor.states import JobState

pytestmark = pytest.mark.timeout(120)
TOKEN = "0123456789abcdef-token"


class RunningProc:
    """Stands in for torchrun's Popen: alive until `code` is set."""

    pid = 999_999

    def __init__(self) -> None:
        self.code = None

    def poll(self):
        return self.code


@pytest.fixture
def sup(tmp_path):
    options = ServerOptions(
        state_dir=tmp_path / "state", control_addr="tcp://127.0.0.1:*", metrics_port=0, token=TOKEN, max_running=4
    )
    supervisor = Supervisor(options)
    supervisor.start()
    yield supervisor
    supervisor.lifecycle.runtime.clear()  # the fake procs have no process tree to kill
    supervisor.close()


def running_job(sup: Supervisor, job_id: str) -> tuple[JobRecord, str]:
    """A job recorded as running with a live (fake) worker group; its channel secret."""
    job = JobRecord(id=job_id, spec={}, run_dir=str(sup.lifecycle.runs_root / job_id), max_restarts=1)
    job.state = JobState.RUNNING
    sup.jobs[job_id] = job
    sup.lifecycle.runtime[job_id] = JobRuntime(proc=RunningProc())
    sup.lifecycle.secrets[job_id] = secret = f"secret-of-{job_id}"
    sup.lifecycle.save(job)
    return job, secret


def serve(sup: Supervisor, seconds: float = 0.5) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sup.serve_once(20)


def control(sup: Supervisor, payload: dict | bytes, timeout: float = 5.0) -> tuple[dict, float]:
    """One control request answered by serve_once calls in this thread; (reply, seconds it took)."""
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(sup.control_addr)
    started = time.monotonic()
    sock.send(payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    try:
        while time.monotonic() - started < timeout:
            if sock.poll(0):
                return json.loads(sock.recv()), time.monotonic() - started
            sup.serve_once(10)
        pytest.fail("no reply from the control socket")
    finally:
        sock.close(linger=0)


def sample(sup: Supervisor, name: str, labels: dict | None = None) -> float:
    return sup.metrics.registry.get_sample_value(name, labels or {})


def push(sup: Supervisor, frames_list: list[list[bytes]]) -> None:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(sup.channels.report_addr)
    for frames in frames_list:
        sock.send_multipart(frames)
    sock.close()


# ------------------------------------------------------------------ 2: failed writes


def emfile(*args, **kwargs):
    raise OSError(errno.EMFILE, "Too many open files")


def erofs(*args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system")


@pytest.mark.parametrize(
    "target, failure",
    [
        ("os.replace", emfile),
        ("os.replace", erofs),
        ("alexserve.durable.open", emfile),
        ("alexserve.durable.open", erofs),
    ],
)
def test_a_failed_write_in_report_handling_marks_the_job_and_the_service_goes_on(sup, monkeypatch, target, failure):
    job, secret = running_job(sup, "job-1")
    other, other_secret = running_job(sup, "job-2")
    if target == "os.replace":
        monkeypatch.setattr(alexserve.durable.os, "replace", failure)
    else:
        monkeypatch.setattr(alexserve.durable, "open", failure, raising=False)
    push(sup, [[secret.encode(), CheckpointEvent(job_id="job-1", step=10).to_bytes()]])
    serve(sup, 0.5)
    assert job.last_checkpoint_step == 10 and "could not save the job record" in job.write_error
    assert sample(sup, "alexserve_state_write_errors_total") >= 1
    reply, _ = control(sup, {"verb": "status", "job_id": "job-1", "token": TOKEN})
    assert reply["ok"] and "could not save" in reply["result"]["write_error"]
    # The other job's reports still count, and once the disk is back the record is saved, the mark cleared.
    push(sup, [[other_secret.encode(), StateEvent(job_id="job-2", state="paused", step=3).to_bytes()]])
    serve(sup, 0.5)
    assert other.state == JobState.PAUSED
    monkeypatch.undo()
    push(sup, [[secret.encode(), CheckpointEvent(job_id="job-1", step=20).to_bytes()]])
    serve(sup, 0.5)
    assert job.write_error is None
    assert json.loads(sup.store.job_dir("job-1").joinpath("job.json").read_text())["last_checkpoint_step"] == 20


def test_a_failed_write_in_tick_is_that_jobs_alone(sup, monkeypatch):
    failing, _ = running_job(sup, "job-1")
    healthy, _ = running_job(sup, "job-2")
    real_replace = alexserve.durable.os.replace

    def replace(src, dst):
        if "job-1" in str(dst):
            emfile()
        return real_replace(src, dst)

    monkeypatch.setattr(alexserve.durable.os, "replace", replace)
    monkeypatch.setattr(process, "kill_job_processes", lambda *a: [])
    for job_id in ("job-1", "job-2"):
        sup.lifecycle.runtime[job_id].proc.code = 0  # both groups exit cleanly
    serve(sup, 0.3)
    assert healthy.state == JobState.COMPLETED
    assert failing.state == JobState.COMPLETED and "Too many open files" in failing.write_error
    on_disk = json.loads(sup.store.job_dir("job-1").joinpath("job.json").read_text())
    assert on_disk["state"] == "running"  # what could not be written stays as it was
    reply, _ = control(sup, {"verb": "list", "token": TOKEN})
    assert [j["state"] for j in reply["result"]["jobs"]] == ["completed", "completed"]


def test_a_failed_submit_is_refused_cleanly_and_leaves_nothing(sup, monkeypatch):
    monkeypatch.setattr(alexserve.durable, "open", erofs, raising=False)
    reply, _ = control(sup, {"verb": "submit", "spec": {"config": {}}, "token": TOKEN})
    assert not reply["ok"] and "could not record the job" in reply["error"] and "internal error" not in reply["error"]
    assert sup.jobs == {} and not list(sup.store.jobs_dir.iterdir())
    monkeypatch.undo()
    reply, _ = control(sup, {"verb": "ping", "token": TOKEN})
    assert reply["ok"]


def test_a_kill_that_fails_part_way_never_leaves_the_tree_stopped(monkeypatch):
    grandchild = "[sys.executable, '-c', 'import time; time.sleep(60)']"
    child = f"import subprocess, sys, time; subprocess.Popen({grandchild}); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", child])
    try:
        time.sleep(0.5)

        def children(self, recursive=False):
            raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(psutil.Process, "children", children)
        with pytest.raises(OSError):
            process.kill_tree(proc, wait_seconds=5)
        monkeypatch.undo()
        assert proc.wait(timeout=5) == -9  # killed, not left SIGSTOPped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------ 2: HTTP limits


def test_half_open_http_connections_are_bounded_and_time_out(sup, monkeypatch):
    monkeypatch.setattr(http_endpoint._QuietHandler, "timeout", 0.5)
    monkeypatch.setattr(http_endpoint._QuietHandler, "deadline_seconds", 1.5)
    sup.http.close()
    sup.http = http_endpoint.MetricsServer(
        "127.0.0.1", 0, sup.metrics.registry, sup.health, None, 4, sup.metrics.http_connections_refused.inc
    )
    sup.http.start()
    url = f"http://127.0.0.1:{sup.http.port}/healthz"
    idle = [socket.create_connection(("127.0.0.1", sup.http.port)) for _ in range(4)]  # send nothing
    try:
        time.sleep(0.2)
        with pytest.raises(urllib.error.HTTPError) as busy:  # the fifth is answered at once, not queued
            urllib.request.urlopen(url, timeout=3)
        assert busy.value.code == 503
        assert sample(sup, "alexserve_http_connections_refused_total") == 1
        time.sleep(1.0)  # the idle ones time out and give their slots back
        with urllib.request.urlopen(url, timeout=3) as r:
            assert json.loads(r.read())["status"] == "ok"
    finally:
        for s in idle:
            s.close()
    # A trickle (a byte every 0.3 s, each read within the timeout) is cut off at the deadline.
    trickle = socket.create_connection(("127.0.0.1", sup.http.port))
    started = time.monotonic()
    try:
        with pytest.raises(OSError):
            for _ in range(100):
                trickle.sendall(b"G")
                time.sleep(0.3)
    finally:
        trickle.close()
    assert time.monotonic() - started < 6


# ------------------------------------------------------------------ 3: authenticated worker channels


def step_report(job_id: str, **kw) -> bytes:
    fields = dict(job_id=job_id, rank=0, pair=0, tower=0, epoch=0, step=5, steps=1, loss=2.0, learning_rate=0.1)
    fields.update(kw, images=kw.get("images", 8))
    return StepReport(**fields).to_bytes()


def test_forged_reports_are_dropped_and_counted(sup):
    job, secret = running_job(sup, "job-1")
    _, other_secret = running_job(sup, "job-2")
    forged_state = StateEvent(job_id="job-1", state="paused", step=999_999).to_bytes()
    push(
        sup,
        [
            [forged_state],  # no secret frame at all (the old wire format)
            [b"", forged_state],
            [b"guess", forged_state],
            [other_secret.encode(), forged_state],  # another job's secret
            [b"", step_report("job-1", images=2**62)],
        ],
    )
    serve(sup, 0.5)
    assert job.state == JobState.RUNNING and job.step == 0
    assert sample(sup, "alexserve_train_images_total") == 0
    assert sample(sup, "alexserve_worker_reports_rejected_total", {"reason": "unauthorized"}) == 4
    assert sample(sup, "alexserve_worker_reports_rejected_total", {"reason": "malformed"}) == 1
    push(sup, [[secret.encode(), step_report("job-1")]])  # the job's own workers are heard
    serve(sup, 0.5)
    assert sample(sup, "alexserve_train_images_total") == 8 and job.step == 5


def test_a_rogue_hello_does_not_capture_the_jobs_commands(sup):
    job, secret = running_job(sup, "job-1")
    ctx = zmq.Context.instance()
    rogue = ctx.socket(zmq.DEALER)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(sup.channels.command_addr)
    rogue.send_multipart([b"", Hello(job_id="job-1").to_bytes()])
    rogue.send_multipart([b"x" * 64, Hello(job_id="job-1").to_bytes()])
    serve(sup, 0.5)
    rt = sup.lifecycle.runtime["job-1"]
    assert rt.identity is None
    reply, _ = control(sup, {"verb": "stop", "job_id": "job-1", "token": TOKEN})
    assert reply["ok"]
    assert rogue.poll(300) == 0, "the rogue received the job's command"
    rogue.close()
    # The real rank 0 (SupervisorChannel with the job's secret) gets it.
    channel = SupervisorChannel("job-1", 0, sup.channels.report_addr, sup.channels.command_addr, secret)
    try:
        command = None
        deadline = time.monotonic() + 5
        while command is None and time.monotonic() < deadline:
            sup.serve_once(10)
            command = channel.poll_command()
        assert command is not None and command.kind == "stop"
    finally:
        channel.close(0.1)


def test_a_report_flood_neither_grows_the_queue_nor_stalls_control(sup, caplog):
    running_job(sup, "job-1")
    assert sup.channels.reports.getsockopt(zmq.RCVHWM) == REPORT_QUEUE_MESSAGES
    ctx = zmq.Context.instance()
    flood = ctx.socket(zmq.PUSH)
    flood.setsockopt(zmq.LINGER, 0)
    flood.setsockopt(zmq.SNDHWM, 100_000)
    flood.connect(sup.channels.report_addr)
    big = step_report("job-1", step_seconds=[0.1] * 1024)
    caplog.set_level(logging.INFO, logger="alexserve.supervisor")
    for _ in range(24_000):
        flood.send_multipart([b"not-the-secret", big], zmq.NOBLOCK)
    slowest = 0.0
    for _ in range(5):
        _, seconds = control(sup, {"verb": "list", "token": TOKEN})
        slowest = max(slowest, seconds)
    flood.close()
    assert slowest < 1.0, f"`job list` took {slowest:.2f}s under a flood"
    dropped = [r.getMessage() for r in caplog.records if "dropped a message" in r.getMessage()]
    assert 1 <= len(dropped) <= 3, dropped  # one line per kind of reject and interval, not one per message
    assert not any("Traceback" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ 6: log noise


def test_unauthenticated_requests_log_one_line_and_a_bad_token_is_unauthorized(sup, caplog):
    caplog.set_level(logging.INFO, logger="alexserve.supervisor")
    for token in ("\udc80\udcff", "\ud800", None, 7, "wrong-token-0123456789"):
        reply, _ = control(sup, {"verb": "list", "token": token})
        assert not reply["ok"] and reply["error"].startswith("unauthorized"), reply
    raw = b'{"verb": "list", "token": "\\udc80"}'  # a lone surrogate: no UTF-8 encoding exists
    reply, _ = control(sup, raw)
    assert reply["error"].startswith("unauthorized")
    for _ in range(50):
        control(sup, {"verb": "list"})
    lines = [r.getMessage() for r in caplog.records]
    assert not any("Traceback" in line or "internal error" in line for line in lines), lines
    refused = [line for line in lines if "refused a control request" in line]
    assert len(refused) == 1 and "\n" not in refused[0], refused
    assert sample(sup, "alexserve_control_requests_total", {"verb": "list", "outcome": "unauthorized"}) == 56
