"""The supervisor's end of the worker channels: reports in, commands out.

Two sockets, both on loopback whatever the control bind (only local workers
talk on them):

    reports   PULL    every worker rank PUSHes StepReports and events
    commands  ROUTER  each job's global rank 0 says Hello over a DEALER and then
                      receives pause, resume, stop and checkpoint_now

Every message arrives behind its job's channel secret (a first frame; the
supervisor makes one per job and hands it to that job's workers only in their
environment, `lifecycle.py`). A message whose secret is no job's, or another
job's, is dropped before it is parsed and counted as unauthorized; a malformed
one is counted as malformed. Each kind of reject is logged in one line, at
most once every few seconds (`quiet_log.py`), never with a traceback.

A flood cannot grow memory or stall the control socket: the PULL socket holds
at most REPORT_QUEUE_MESSAGES messages (ZeroMQ's high-water mark: senders drop
beyond it) and one poll reads at most MAX_REPORTS_PER_DRAIN of them, or for at
most MAX_DRAIN_SECONDS, before the control socket is served again.

A command waits in the job's runtime until its rank 0 has said Hello, so one
sent while a group (re)starts is delivered, not lost.
"""

from __future__ import annotations

import hmac
import logging
import time

import zmq

from alexserve.contract.names import ENV_CONTROL_ADDR, ENV_REPORT_ADDR
from alexserve.contract.worker_messages import (
    MAX_COMMAND_BYTES,
    MAX_REPORT_BYTES,
    MAX_SECRET_BYTES,
    CheckpointEvent,
    ErrorEvent,
    EvalReport,
    Hello,
    Message,
    MessageError,
    StateEvent,
    StepReport,
    parse_report,
)
from alexserve.supervisor.jobs import JobRecord
from alexserve.supervisor.lifecycle import JobLifecycle, JobRuntime
from alexserve.supervisor.metrics import SupervisorMetrics
from alexserve.supervisor.quiet_log import RateLimitedLog
from alexserve.supervisor.states import JobState

log = logging.getLogger(__name__)

REPORT_QUEUE_MESSAGES = 1000  # at most about 64 MB of queued reports (MAX_REPORT_BYTES each)
MAX_REPORTS_PER_DRAIN = 500  # per poll, so control requests are not starved by a flood
MAX_HELLOS_PER_DRAIN = 100
MAX_DRAIN_SECONDS = 0.05


def bounded_socket(context: zmq.Context, kind: int, max_bytes: int) -> zmq.Socket:
    """A socket that never lingers and drops a sender's connection on a frame over `max_bytes`."""
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)  # bigger frames drop the sender's connection before we buffer them
    return sock


class WorkerChannels:
    """Reads worker reports into job records and metrics; delivers commands to each job's rank 0."""

    def __init__(self, lifecycle: JobLifecycle, metrics: SupervisorMetrics) -> None:
        self.lifecycle, self.metrics = lifecycle, metrics
        self.noise = RateLimitedLog(log)
        self.reports: zmq.Socket | None = None
        self.commands: zmq.Socket | None = None
        self.report_addr = self.command_addr = ""

    def bind(self, context: zmq.Context) -> None:
        self.reports = bounded_socket(context, zmq.PULL, MAX_REPORT_BYTES)
        self.reports.setsockopt(zmq.RCVHWM, REPORT_QUEUE_MESSAGES)
        self.report_addr = f"tcp://127.0.0.1:{self.reports.bind_to_random_port('tcp://127.0.0.1')}"
        self.commands = bounded_socket(context, zmq.ROUTER, MAX_COMMAND_BYTES)
        self.commands.setsockopt(zmq.RCVHWM, MAX_HELLOS_PER_DRAIN * 10)
        self.commands.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unroutable command raises instead of vanishing
        self.command_addr = f"tcp://127.0.0.1:{self.commands.bind_to_random_port('tcp://127.0.0.1')}"

    def worker_env(self) -> dict[str, str]:
        """Where a launched worker finds these channels (its job's secret is added at launch)."""
        return {ENV_REPORT_ADDR: self.report_addr, ENV_CONTROL_ADDR: self.command_addr}

    # ------------------------------------------------------------ authentication

    def _reject(self, reason: str, where: str, detail: str) -> None:
        self.metrics.reports_rejected.labels(reason=reason).inc()
        self.noise(f"{where}:{reason}", f"{where}: dropped a message ({reason}): {detail[:300]}")

    def _secret_owner(self, secret: bytes) -> str | None:
        """The job whose channel secret `secret` is, or None (constant-time comparisons)."""
        if len(secret) > MAX_SECRET_BYTES:
            return None
        owner = None
        for job_id, expected in list(self.lifecycle.secrets.items()):
            if hmac.compare_digest(expected.encode(), secret):
                owner = job_id
        return owner

    def authenticated(self, frames: list[bytes], where: str) -> Message | None:
        """The message of [secret, message] frames when the secret is its job's; None (counted, logged) otherwise."""
        if len(frames) != 2:
            self._reject("malformed", where, f"{len(frames)} frames, expected 2 (the job's secret, the message)")
            return None
        owner = self._secret_owner(frames[0])
        if owner is None:
            self._reject("unauthorized", where, "no job's channel secret")
            return None
        try:
            message = parse_report(frames[1])
        except MessageError as err:
            self._reject("malformed", where, f"from {owner}'s workers: {err}")
            return None
        if message.job_id != owner:
            self._reject("unauthorized", where, f"{owner}'s secret on a message for {message.job_id}")
            return None
        return message

    # ------------------------------------------------------------ commands

    def command(self, job: JobRecord, kind: type[Message]) -> int:
        """Queues a command for the job's rank 0 and sends it when it can; the command's id."""
        rt = self.lifecycle.runtime[job.id]
        rt.command_seq += 1
        command = kind(job_id=job.id, command_id=rt.command_seq)
        rt.pending.append(command)
        self.flush_commands(job.id)
        return rt.command_seq

    def flush_commands(self, job_id: str) -> None:
        rt = self.lifecycle.runtime.get(job_id)
        if rt is None or rt.identity is None or self.commands is None:
            return
        while rt.pending:
            try:
                self.commands.send_multipart([rt.identity, rt.pending[0].to_bytes()], zmq.NOBLOCK)
            except zmq.ZMQError as err:  # EHOSTUNREACH: rank 0 went away; the next Hello flushes again
                log.info(f"{job_id}: command {rt.pending[0].kind} not delivered yet ({err})")
                rt.identity = None
                return
            rt.pending.pop(0)

    def drain_hellos(self) -> None:
        """Learns each job's rank-0 identity from its Hello and sends what waited for it."""
        for _ in range(MAX_HELLOS_PER_DRAIN):
            try:
                frames = self.commands.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            hello = self.authenticated(frames[1:], "command socket")
            if hello is None:
                continue
            if not isinstance(hello, Hello):
                self._reject("malformed", "command socket", f"a {hello.kind} report, expected a hello")
                continue
            rt = self.lifecycle.runtime.get(hello.job_id)
            if rt is None or rt.proc is None:
                self._reject("unknown_job", "command socket", f"hello from {hello.job_id}, which is not running")
                continue
            rt.identity = frames[0]
            self.flush_commands(hello.job_id)

    # ------------------------------------------------------------ reports

    def drain_reports(self) -> None:
        """Handles queued reports (at most MAX_REPORTS_PER_DRAIN or MAX_DRAIN_SECONDS' worth); nothing before `bind`."""
        if self.reports is None:
            return
        deadline = time.monotonic() + MAX_DRAIN_SECONDS
        for _ in range(MAX_REPORTS_PER_DRAIN):
            try:
                frames = self.reports.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            report = self.authenticated(frames, "report socket")
            if report is not None:
                self.handle_report(report)
            if time.monotonic() > deadline:
                return

    def handle_report(self, report: Message) -> None:
        """One validated report: metrics, the job's progress, rank 0's pause/resume/stop, a divergence."""
        job = self.lifecycle.jobs.get(report.job_id)
        if job is None or isinstance(report, Hello):
            self._reject("unknown_job", "report socket", f"a {report.kind} for {report.job_id}")
            return
        # A group's last reports can arrive after its exit was reaped: they still count.
        rt = self.lifecycle.runtime.get(report.job_id) or JobRuntime()
        if isinstance(report, StepReport):
            self.metrics.on_step(report)
            rt.rank_steps[report.rank] = report.step
            if report.rank == 0:
                job.step, job.epoch, job.loss = report.step, report.epoch, report.loss
        elif isinstance(report, EvalReport):
            self.metrics.on_eval(report)
        elif isinstance(report, CheckpointEvent):
            self.metrics.on_checkpoint(report)
            job.last_checkpoint_step, job.last_checkpoint_at = report.step, report.timestamp
            self.lifecycle.save(job)  # a failed write marks the job; the reports go on
        elif isinstance(report, StateEvent):
            self._on_state(job, rt, report)
        elif isinstance(report, ErrorEvent):
            job.last_error = report.message
            if report.reason == "diverged":
                rt.diverged = report.message
            log.info(f"{job.id} rank {report.rank}: {report.message}")

    def _on_state(self, job: JobRecord, rt: JobRuntime, report: StateEvent) -> None:
        rt.rank_states[report.rank] = report.state
        rt.rank_steps[report.rank] = report.step
        if report.rank != 0:
            return
        job.step = report.step
        if report.state == "paused" and job.state == JobState.RUNNING:
            self.lifecycle.set_state(job, JobState.PAUSED, f"paused at step {report.step}")
        elif report.state == "running" and job.state == JobState.PAUSED:
            self.lifecycle.set_state(job, JobState.RUNNING, f"resumed at step {report.step}")
        elif report.state == "stopped":
            rt.stop_acknowledged = True
