"""The supervisor's end of the worker channels: reports in, commands out.

Two sockets, both on loopback whatever the control bind (only local workers
talk on them):

    reports   PULL    every worker rank PUSHes StepReports and events
    commands  ROUTER  each job's global rank 0 says Hello over a DEALER and then
                      receives pause, resume, stop and checkpoint_now

A command waits in the job's runtime until its rank 0 has said Hello, so one
sent while a group (re)starts is delivered, not lost. Every message is
validated (`contract.worker_messages`); rejects are counted by reason.
"""

from __future__ import annotations

import logging

import zmq

from alexserve.contract.names import ENV_CONTROL_ADDR, ENV_REPORT_ADDR, ENV_TOKEN
from alexserve.contract.worker_messages import (
    MAX_COMMAND_BYTES,
    MAX_REPORT_BYTES,
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
from alexserve.supervisor.auth import tokens_match
from alexserve.supervisor.jobs import JobRecord
from alexserve.supervisor.lifecycle import JobLifecycle, JobRuntime
from alexserve.supervisor.metrics import SupervisorMetrics
from alexserve.supervisor.states import JobState

log = logging.getLogger(__name__)

MAX_REPORTS_PER_DRAIN = 10_000  # bounded, so control requests are not starved by a flood
MAX_HELLOS_PER_DRAIN = 1000


def bounded_socket(context: zmq.Context, kind: int, max_bytes: int) -> zmq.Socket:
    """A socket that never lingers and drops a sender's connection on a frame over `max_bytes`."""
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)  # bigger frames drop the sender's connection before we buffer them
    return sock


class WorkerChannels:
    """Reads worker reports into job records and metrics; delivers commands to each job's rank 0."""

    def __init__(self, lifecycle: JobLifecycle, metrics: SupervisorMetrics, token: str | None) -> None:
        self.lifecycle, self.metrics, self.token = lifecycle, metrics, token
        self.reports: zmq.Socket | None = None
        self.commands: zmq.Socket | None = None
        self.report_addr = self.command_addr = ""

    def bind(self, context: zmq.Context) -> None:
        self.reports = bounded_socket(context, zmq.PULL, MAX_REPORT_BYTES)
        self.reports.setsockopt(zmq.RCVHWM, 10_000)
        self.report_addr = f"tcp://127.0.0.1:{self.reports.bind_to_random_port('tcp://127.0.0.1')}"
        self.commands = bounded_socket(context, zmq.ROUTER, MAX_COMMAND_BYTES)
        self.commands.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unroutable command raises instead of vanishing
        self.command_addr = f"tcp://127.0.0.1:{self.commands.bind_to_random_port('tcp://127.0.0.1')}"

    def worker_env(self) -> dict[str, str]:
        """Where a launched worker finds these channels (and the token it must show)."""
        env = {ENV_REPORT_ADDR: self.report_addr, ENV_CONTROL_ADDR: self.command_addr}
        if self.token is not None:
            env[ENV_TOKEN] = self.token
        return env

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
            hello = self._parse_hello(frames)
            if hello is None:
                continue
            rt = self.lifecycle.runtime.get(hello.job_id)
            if rt is None or rt.proc is None:
                self.metrics.reports_rejected.labels(reason="unknown_job").inc()
                continue
            rt.identity = frames[0]
            self.flush_commands(hello.job_id)

    def _parse_hello(self, frames: list[bytes]) -> Hello | None:
        reject = self.metrics.reports_rejected
        if len(frames) != 2:
            reject.labels(reason="malformed").inc()
            return None
        try:
            hello = parse_report(frames[1])
        except MessageError as err:
            reject.labels(reason="malformed").inc()
            log.info(f"command socket: {err}")
            return None
        if not isinstance(hello, Hello):
            reject.labels(reason="malformed").inc()
            return None
        if not tokens_match(self.token, hello.token):
            reject.labels(reason="unauthorized").inc()
            return None
        return hello

    # ------------------------------------------------------------ reports

    def drain_reports(self) -> None:
        """Handles the reports queued on the socket (at most MAX_REPORTS_PER_DRAIN); nothing before `bind`."""
        if self.reports is None:
            return
        for _ in range(MAX_REPORTS_PER_DRAIN):
            try:
                data = self.reports.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                report = parse_report(data)
            except MessageError as err:
                self.metrics.reports_rejected.labels(reason="malformed").inc()
                log.info(f"report socket: {err}")
                continue
            self.handle_report(report)

    def handle_report(self, report: Message) -> None:
        """One validated report: metrics, the job's progress, rank 0's pause/resume/stop, a divergence."""
        job = self.lifecycle.jobs.get(report.job_id)
        if job is None or isinstance(report, Hello):
            self.metrics.reports_rejected.labels(reason="unknown_job").inc()
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
            self.lifecycle.store.save(job)
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
