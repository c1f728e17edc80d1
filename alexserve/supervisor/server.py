"""`alexserve supervisor`: job control over ZeroMQ, worker groups under torchrun, Prometheus /metrics.

    alexserve supervisor --state-dir ~/.alexserve                 # control tcp://127.0.0.1:7355, metrics :7356
    alexserve job submit job.yaml && alexserve job list
    curl -s 127.0.0.1:7356/metrics | grep alexserve_train_images_total

    # reachable from other hosts: a token is required (file or ALEXSERVE_TOKEN)
    alexserve supervisor --control tcp://0.0.0.0:7355 --metrics-host 0.0.0.0 --token-file /run/secrets/alexserve_token

One thread runs everything that changes job state: a ZeroMQ poll over the
control socket (REP: one request, one reply), the report socket (PULL: every
worker rank PUSHes StepReports and events) and the command socket (ROUTER:
each job's global rank 0 says Hello over a DEALER and receives pause, resume,
stop and checkpoint_now), then a tick that reaps exited worker groups,
relaunches them from their newest checkpoint within the restart budget (never
a group whose training diverged: that job fails with the worker's message, and
alexserve_train_divergences_total counts it), and launches queued jobs.
/metrics and /healthz are served from a daemon thread that only reads the registry.

Each job's worker group is `torchrun --nproc_per_node=2*num_pairs --max-restarts=0 ...
-m alexserve.worker --config JOB/config.json --resume` in a session of its own;
cancel and shutdown kill the whole process tree, and a new supervisor kills
whatever a crashed one left behind, so no orphan workers remain.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from alexserve.supervisor import process
from alexserve.supervisor.auth import AuthError, check_binds, is_loopback_host, read_token, tokens_match
from alexserve.supervisor.http_endpoint import MetricsServer
from alexserve.supervisor.jobs import (
    ACTIVE_STATES,
    FINAL_STATES,
    RESUMABLE_STATES,
    JobRecord,
    JobState,
    JobStore,
    tail_lines,
)
from alexserve.checkpoint.naming import newest_committed_step
from alexserve.contract.worker_messages import (
    MAX_COMMAND_BYTES,
    MAX_REPORT_BYTES,
    CheckpointEvent,
    CheckpointNowCommand,
    ErrorEvent,
    EvalReport,
    Hello,
    Message,
    MessageError,
    PauseCommand,
    ResumeCommand,
    StateEvent,
    StepReport,
    StopCommand,
    parse_report,
)
from alexserve.supervisor.metrics import CONTROL_VERBS, SupervisorMetrics
from alexserve.supervisor.control_messages import (
    DEFAULT_CONTROL_ADDR,
    DEFAULT_METRICS_PORT,
    SOCKET_MAX_MESSAGE_BYTES,
    decode_request_tree,
    error_reply,
    ok_reply,
    validate_request,
)
from alexserve.supervisor.spec import SpecError, spec_from_tree
from alexserve.contract.names import ENV_CONTROL_ADDR, ENV_JOB_ID, ENV_REPORT_ADDR, ENV_STATE_DIR, ENV_SUPERVISOR, ENV_TOKEN, WorkerExit

POLL_MILLISECONDS = 100


class RequestError(Exception):
    """A request that cannot be done; the message goes back to the client."""


@dataclass
class ServerOptions:
    state_dir: Path
    control_addr: str = DEFAULT_CONTROL_ADDR
    metrics_host: str = "127.0.0.1"
    metrics_port: int = DEFAULT_METRICS_PORT
    token: str | None = None
    metrics_public: bool = False
    max_running: int = 1
    stop_timeout_seconds: float = 300.0
    restart_delay_seconds: float = 1.0
    worker_module: str = process.WORKER_MODULE


@dataclass
class JobRuntime:
    """What only the live supervisor knows about an active job (never persisted)."""

    proc: Any = None  # subprocess.Popen of the launcher/torchrun
    identity: bytes | None = None  # ROUTER identity of the job's rank-0 DEALER
    pending: list[Message] = field(default_factory=list)  # commands waiting for the Hello
    relaunch_at: float | None = None
    stop_deadline: float | None = None
    pause_wanted: bool = False
    stop_acknowledged: bool = False
    command_seq: int = 0
    rank_steps: dict[int, int] = field(default_factory=dict)  # newest step each rank reported
    rank_states: dict[int, str] = field(default_factory=dict)
    diverged: str | None = None  # a rank's ErrorEvent said training diverged: its message


def log(line: str) -> None:
    print(f"[alexserve supervisor] {time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


class Supervisor:
    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.store = JobStore(options.state_dir)
        self.metrics = SupervisorMetrics()
        self.jobs: dict[str, JobRecord] = {}
        self.runtime: dict[str, JobRuntime] = {}
        self.started_at = time.time()
        self._stop_requested = False
        self._lock_file = None
        self.context: zmq.Context | None = None
        self.http: MetricsServer | None = None

    # ------------------------------------------------------------ start-up and shut-down

    def start(self) -> None:
        """Locks the state dir, kills leftovers, recovers job records, binds every socket."""
        self._lock_state_dir()
        leftovers = process.kill_leftovers(self.store.state_dir)
        if leftovers:
            log(f"killed {len(leftovers)} worker process(es) left by a previous supervisor: {leftovers}")
        self._recover_jobs()
        self.context = zmq.Context()
        self.control = self._socket(zmq.REP, SOCKET_MAX_MESSAGE_BYTES)
        self.control.bind(self.options.control_addr)
        self.control_addr = self.control.getsockopt_string(zmq.LAST_ENDPOINT)
        # Worker channels stay on loopback whatever the control bind: only local workers talk on them.
        self.reports = self._socket(zmq.PULL, MAX_REPORT_BYTES)
        self.reports.setsockopt(zmq.RCVHWM, 10_000)
        self.report_addr = f"tcp://127.0.0.1:{self.reports.bind_to_random_port('tcp://127.0.0.1')}"
        self.commands = self._socket(zmq.ROUTER, MAX_COMMAND_BYTES)
        self.commands.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unroutable command raises instead of vanishing
        self.command_addr = f"tcp://127.0.0.1:{self.commands.bind_to_random_port('tcp://127.0.0.1')}"
        metrics_token = None if (self.options.metrics_public or is_loopback_host(self.options.metrics_host)) else self.options.token
        self.http = MetricsServer(self.options.metrics_host, self.options.metrics_port, self.metrics.registry, self.health, metrics_token)
        self.http.start()
        self.poller = zmq.Poller()
        for sock in (self.control, self.reports, self.commands):
            self.poller.register(sock, zmq.POLLIN)
        self._update_job_gauge()
        log(f"control {self.control_addr}, metrics http://{self.http.host}:{self.http.port}/metrics, "
            f"state {self.store.state_dir}, {len(self.jobs)} job(s) on record")

    def _socket(self, kind: int, max_bytes: int) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)  # bigger frames drop the sender's connection before we buffer them
        return sock

    def _lock_state_dir(self) -> None:
        path = self.store.state_dir / "supervisor.lock"
        self._lock_file = open(path, "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another supervisor is using {self.store.state_dir} (lock {path} is held)") from None

    def _recover_jobs(self) -> None:
        records, problems = self.store.load_all()
        for problem in problems:
            log(problem)
        for record in records.values():
            if record.state in ACTIVE_STATES:
                was = record.state.value
                record.state = JobState.FAILED
                record.reason = (f"interrupted: the supervisor exited while the job was {was}; "
                                 f"`alexserve job resume {record.id}` continues from its newest checkpoint")
                record.finished_at = time.time()
                record.pid = None
                self.store.save(record)
            self.jobs[record.id] = record

    def request_stop(self, *_: Any) -> None:
        self._stop_requested = True

    def serve_forever(self) -> None:
        try:
            while not self._stop_requested:
                self.serve_once(POLL_MILLISECONDS)
        finally:
            self.close()

    def serve_once(self, timeout_ms: int) -> None:
        events = dict(self.poller.poll(timeout_ms))
        if self.control in events:
            self._serve_control()
        if self.reports in events:
            self._drain_reports()
        if self.commands in events:
            self._drain_hellos()
        self.tick()

    def close(self) -> None:
        """Kills every worker group (recording why), closes sockets and the HTTP server."""
        for job in self.jobs.values():
            rt = self.runtime.get(job.id)
            if rt is not None and rt.proc is not None:
                process.kill_tree(rt.proc)
            if job.state in ACTIVE_STATES:
                self._finish(job, JobState.FAILED, "interrupted: the supervisor shut down while the job was "
                             f"{job.state.value}; `alexserve job resume {job.id}` continues from its newest checkpoint")
        self.runtime.clear()
        if self.http is not None:
            self.http.close()
            self.http = None
        if self.context is not None:
            self.context.destroy(linger=0)
            self.context = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def health(self) -> dict[str, Any]:
        counts = self._job_counts()
        return {"status": "ok", "uptime_seconds": round(time.time() - self.started_at, 3), "jobs": counts}

    # ------------------------------------------------------------ control requests

    def _serve_control(self) -> None:
        try:
            frames = self.control.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            reply = self.handle_request(frames)
        except Exception as err:  # the server stays up whatever a request does
            log(f"internal error answering a request: {err!r}\n{traceback.format_exc()}")
            reply = error_reply(f"internal error: {err!r}"[:1000])
        self.control.send(reply)

    def handle_request(self, frames: list[bytes]) -> bytes:
        def count(verb: Any, outcome: str) -> None:
            label = verb if isinstance(verb, str) and verb in CONTROL_VERBS else "invalid"
            self.metrics.control_requests.labels(verb=label, outcome=outcome).inc()

        if len(frames) != 1:
            count(None, "error")
            return error_reply(f"a request is one frame, got {len(frames)}")
        try:
            tree = decode_request_tree(frames[0])
        except MessageError as err:
            count(None, "error")
            return error_reply(str(err))
        verb = tree.get("verb")
        if not tokens_match(self.options.token, tree.get("token")):
            count(verb, "unauthorized")
            return error_reply("unauthorized: this supervisor requires a token (ALEXSERVE_TOKEN or --token-file)")
        try:
            request = validate_request(tree)
            result = getattr(self, f"_verb_{request.verb}")(request)
        except (MessageError, RequestError, SpecError) as err:
            count(verb, "error")
            return error_reply(str(err))
        count(verb, "ok")
        return ok_reply(result)

    def _job(self, job_id: str) -> JobRecord:
        job = self.jobs.get(job_id)
        if job is None:
            raise RequestError(f"no job {job_id!r}; `alexserve job list` shows the known ones")
        return job

    def _verb_ping(self, request) -> dict[str, Any]:
        return self.health()

    def _verb_submit(self, request) -> dict[str, Any]:
        spec = spec_from_tree(request.spec, request.origin)
        job_id = self.store.next_id(self.jobs)
        config_train = request.spec.get("config", {}).get("train", {}) if isinstance(request.spec.get("config"), dict) else {}
        if spec.run_dir is not None:
            run_dir = spec.run_dir
        elif isinstance(config_train, dict) and "run_dir" in config_train:
            run_dir = spec.config.train.run_dir
        else:
            run_dir = self.store.job_dir(job_id) / "run"
        run_dir = Path(run_dir).expanduser().resolve()
        config = spec.config.model_copy(deep=True)
        config.train.run_dir = run_dir
        if config.train.checkpoint_dir is not None:
            config.train.checkpoint_dir = Path(config.train.checkpoint_dir).expanduser().resolve()
        self.store.job_dir(job_id).mkdir(parents=True, exist_ok=False)
        self.store.write_config(job_id, config.model_dump(mode="json"))
        job = JobRecord(id=job_id, name=spec.name, spec=request.spec, run_dir=str(run_dir),
                        checkpoint_dir=str(config.train.checkpoints), max_restarts=spec.max_restarts, num_pairs=spec.num_pairs,
                        reason="waiting for a free slot")
        self.store.save(job)
        self.jobs[job_id] = job
        self._update_job_gauge()
        log(f"{job_id} submitted ({request.origin}), run dir {run_dir}")
        self.tick()  # launch at once when a slot is free
        return job.summary()

    def _verb_list(self, request) -> dict[str, Any]:
        ordered = sorted(self.jobs.values(), key=lambda j: (j.created_at, j.id))
        return {"jobs": [j.summary() for j in ordered]}

    def _verb_status(self, request) -> dict[str, Any]:
        job = self._job(request.job_id)
        result = job.model_dump(mode="json")
        result["log_path"] = str(self.store.log_path(job.id))
        result["config_path"] = str(self.store.config_path(job.id))
        result["newest_checkpoint_step"] = newest_committed_step(self._checkpoints(job))
        rt = self.runtime.get(job.id)
        result["ranks"] = {str(r): {"step": s, "state": rt.rank_states.get(r)} for r, s in sorted(rt.rank_steps.items())} if rt else {}
        result["pause_requested"] = bool(rt and rt.pause_wanted)
        return result

    def _verb_pause(self, request) -> dict[str, Any]:
        job = self._job(request.job_id)
        if job.state not in (JobState.RUNNING, JobState.PAUSED):
            raise RequestError(f"{job.id} is {job.state.value}; only a running job can be paused")
        rt = self.runtime[job.id]
        if job.state == JobState.RUNNING and not rt.pause_wanted:
            rt.pause_wanted = True
            self._command(job, PauseCommand)
        return {"id": job.id, "state": job.state.value, "requested": "pause"}

    def _verb_resume(self, request) -> dict[str, Any]:
        job = self._job(request.job_id)
        if job.state in (JobState.RUNNING, JobState.PAUSED):
            rt = self.runtime[job.id]
            if rt.pause_wanted or job.state == JobState.PAUSED:
                rt.pause_wanted = False
                self._command(job, ResumeCommand)
            return {"id": job.id, "state": job.state.value, "requested": "resume"}
        if job.state in RESUMABLE_STATES:
            job.state = JobState.QUEUED
            job.restarts = 0
            job.finished_at = None
            job.exit_code = None
            job.reason = f"resumed: continues from checkpoint step {newest_committed_step(self._checkpoints(job))}"
            self.store.save(job)
            self._update_job_gauge()
            self.tick()
            return {"id": job.id, "state": job.state.value, "requested": "resume"}
        raise RequestError(f"{job.id} is {job.state.value}; resume applies to paused, stopped, failed or cancelled jobs")

    def _verb_stop(self, request) -> dict[str, Any]:
        job = self._job(request.job_id)
        if job.state == JobState.QUEUED:
            self._finish(job, JobState.STOPPED, "stopped before it was launched")
            return {"id": job.id, "state": job.state.value}
        if job.state == JobState.STOPPING:
            return {"id": job.id, "state": job.state.value}
        if job.state not in (JobState.RUNNING, JobState.PAUSED):
            raise RequestError(f"{job.id} is {job.state.value}; only a queued, running or paused job can be stopped")
        rt = self.runtime[job.id]
        self._set_state(job, JobState.STOPPING, "stop requested: checkpoint, then exit")
        rt.stop_deadline = time.monotonic() + self.options.stop_timeout_seconds
        if rt.relaunch_at is not None:  # between a death and its relaunch: nothing runs, the checkpoint is on disk
            rt.relaunch_at = None
            self._finish(job, JobState.STOPPED, "stopped while waiting to relaunch")
        else:
            self._command(job, StopCommand)
        return {"id": job.id, "state": job.state.value}

    def _verb_cancel(self, request) -> dict[str, Any]:
        job = self._job(request.job_id)
        if job.state in FINAL_STATES:
            raise RequestError(f"{job.id} is already {job.state.value}")
        rt = self.runtime.pop(job.id, None)
        if rt is not None and rt.proc is not None:
            code = process.kill_tree(rt.proc)
            job.exit_code = code
        self._finish(job, JobState.CANCELLED, "cancelled on request: worker group killed")
        return {"id": job.id, "state": job.state.value}

    def _verb_checkpoint_now(self, request) -> dict[str, Any]:
        job = self._job(request.job_id)
        if job.state != JobState.RUNNING:
            raise RequestError(f"{job.id} is {job.state.value}; only a running job takes checkpoint-now "
                               "(a paused one has nothing new to save; stop checkpoints too)")
        command_id = self._command(job, CheckpointNowCommand)
        return {"id": job.id, "state": job.state.value, "requested": "checkpoint_now", "command_id": command_id}

    def _verb_logs(self, request) -> dict[str, Any]:
        job = self._job(request.job_id)
        path = self.store.log_path(job.id)
        return {"id": job.id, "path": str(path), "text": tail_lines(path, request.lines)}

    # ------------------------------------------------------------ worker channels

    def _command(self, job: JobRecord, kind: type) -> int:
        rt = self.runtime[job.id]
        rt.command_seq += 1
        command = kind(job_id=job.id, command_id=rt.command_seq)
        rt.pending.append(command)
        self._flush_commands(job.id)
        return rt.command_seq

    def _flush_commands(self, job_id: str) -> None:
        rt = self.runtime.get(job_id)
        if rt is None or rt.identity is None:
            return
        while rt.pending:
            try:
                self.commands.send_multipart([rt.identity, rt.pending[0].to_bytes()], zmq.NOBLOCK)
            except zmq.ZMQError as err:  # EHOSTUNREACH: rank 0 went away; the next Hello flushes again
                log(f"{job_id}: command {rt.pending[0].kind} not delivered yet ({err})")
                rt.identity = None
                return
            rt.pending.pop(0)

    def _drain_hellos(self) -> None:
        for _ in range(1000):
            try:
                frames = self.commands.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                self.metrics.reports_rejected.labels(reason="malformed").inc()
                continue
            identity, data = frames
            try:
                hello = parse_report(data)
            except MessageError as err:
                self.metrics.reports_rejected.labels(reason="malformed").inc()
                log(f"command socket: {err}")
                continue
            if not isinstance(hello, Hello):
                self.metrics.reports_rejected.labels(reason="malformed").inc()
                continue
            if not tokens_match(self.options.token, hello.token):
                self.metrics.reports_rejected.labels(reason="unauthorized").inc()
                continue
            rt = self.runtime.get(hello.job_id)
            if rt is None or rt.proc is None:
                self.metrics.reports_rejected.labels(reason="unknown_job").inc()
                continue
            rt.identity = identity
            self._flush_commands(hello.job_id)

    def _drain_reports(self) -> None:
        for _ in range(10_000):  # bounded, so control requests are not starved by a flood
            try:
                data = self.reports.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                report = parse_report(data)
            except MessageError as err:
                self.metrics.reports_rejected.labels(reason="malformed").inc()
                log(f"report socket: {err}")
                continue
            self.handle_report(report)

    def handle_report(self, report: Message) -> None:
        job = self.jobs.get(report.job_id)
        if job is None or isinstance(report, Hello):
            self.metrics.reports_rejected.labels(reason="unknown_job").inc()
            return
        # A group's last reports can arrive after its exit was reaped: they still count.
        rt = self.runtime.get(report.job_id) or JobRuntime()
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
            self.store.save(job)
        elif isinstance(report, StateEvent):
            rt.rank_states[report.rank] = report.state
            rt.rank_steps[report.rank] = report.step
            if report.rank == 0:
                job.step = report.step
                if report.state == "paused" and job.state == JobState.RUNNING:
                    self._set_state(job, JobState.PAUSED, f"paused at step {report.step}")
                elif report.state == "running" and job.state == JobState.PAUSED:
                    self._set_state(job, JobState.RUNNING, f"resumed at step {report.step}")
                elif report.state == "stopped":
                    rt.stop_acknowledged = True
        elif isinstance(report, ErrorEvent):
            job.last_error = report.message
            if report.reason == "diverged":
                rt.diverged = report.message
            log(f"{job.id} rank {report.rank}: {report.message}")

    # ------------------------------------------------------------ process supervision

    def tick(self) -> None:
        now = time.monotonic()
        for job in list(self.jobs.values()):
            rt = self.runtime.get(job.id)
            if rt is None:
                continue
            if rt.proc is not None:
                code = rt.proc.poll()
                if code is not None:
                    self._on_exit(job, rt, code)
                elif job.state == JobState.STOPPING and rt.stop_deadline is not None and now > rt.stop_deadline:
                    job.exit_code = process.kill_tree(rt.proc)
                    self.runtime.pop(job.id, None)
                    self._finish(job, JobState.FAILED, f"did not stop within {self.options.stop_timeout_seconds:g}s; worker group killed")
            elif rt.relaunch_at is not None and now >= rt.relaunch_at:
                rt.relaunch_at = None
                self._launch(job)
        slots = self.options.max_running - sum(1 for j in self.jobs.values() if j.state in ACTIVE_STATES)
        for job in sorted((j for j in self.jobs.values() if j.state == JobState.QUEUED), key=lambda j: (j.created_at, j.id)):
            if slots <= 0:
                break
            self._launch(job)
            slots -= 1

    def _launch(self, job: JobRecord) -> None:
        rt = self.runtime.setdefault(job.id, JobRuntime())
        env = {
            ENV_JOB_ID: job.id, ENV_REPORT_ADDR: self.report_addr, ENV_CONTROL_ADDR: self.command_addr,
            process.MARK_ENV: str(self.store.state_dir),
        }
        if self.options.token is not None:
            env[ENV_TOKEN] = self.options.token
        try:
            rt.proc = process.launch_worker_group(self.store.config_path(job.id), self.store.log_path(job.id), env,
                                                  self.options.worker_module, nproc_per_node=2 * job.num_pairs)
        except OSError as err:
            self.runtime.pop(job.id, None)
            self._finish(job, JobState.FAILED, f"could not launch torchrun: {err}")
            return
        rt.identity, rt.stop_acknowledged = None, False
        rt.pending = []
        if rt.pause_wanted:  # a relaunched group starts running; the user still wants it paused
            rt.command_seq += 1
            rt.pending.append(PauseCommand(job_id=job.id, command_id=rt.command_seq))
        rt.rank_steps.clear()
        rt.rank_states.clear()
        job.attempts += 1
        job.pid = rt.proc.pid
        job.started_at = job.started_at or time.time()
        if job.state != JobState.RUNNING:
            job.state = JobState.RUNNING
        if job.attempts == 1 or job.reason.startswith(("waiting", "resumed")):
            job.reason = f"launched (attempt {job.attempts})"
        self.store.save(job)
        self._update_job_gauge()
        log(f"{job.id} launched: torchrun pid {rt.proc.pid}, attempt {job.attempts}")

    def _on_exit(self, job: JobRecord, rt: JobRuntime, code: int) -> None:
        self._drain_reports()  # the group's final reports (last steps, StateEvent stopped) before deciding
        stray = process.kill_job_processes(self.store.state_dir, job.id)  # workers torchrun failed to take down
        if stray:
            log(f"{job.id}: killed {len(stray)} worker process(es) that outlived torchrun: {stray}")
        rt.proc = None
        rt.identity = None
        job.exit_code = code
        job.pid = None
        if code != 0 and (rt.diverged is not None or code == WorkerExit.DIVERGED):
            # A relaunch would start from the same checkpoint with the same settings and diverge again:
            # fail now and leave the restart budget alone.
            self.runtime.pop(job.id, None)
            self.metrics.divergences.inc()
            reason = rt.diverged or f"training diverged (worker exit code {code}){self._last_error(job)}"
            self._finish(job, JobState.FAILED, reason)
            return
        if job.state == JobState.STOPPING:
            self.runtime.pop(job.id, None)
            if code == 0:
                checkpoint = newest_committed_step(self._checkpoints(job))
                self._finish(job, JobState.STOPPED, f"stopped on request at step {job.step}; newest checkpoint: step {checkpoint}")
            else:
                self._finish(job, JobState.FAILED, f"worker group exited with code {code} while stopping{self._last_error(job)}")
            return
        if code == 0:
            self.runtime.pop(job.id, None)
            self._finish(job, JobState.COMPLETED, f"completed at step {job.step}")
            return
        if job.restarts < job.max_restarts:
            job.restarts += 1
            job.restarts_total += 1
            self.metrics.restarts.inc()
            checkpoint = newest_committed_step(self._checkpoints(job))
            origin = f"checkpoint step {checkpoint}" if checkpoint is not None else "scratch (no checkpoint yet)"
            job.reason = (f"worker group exited with code {code}{self._last_error(job)}; relaunching from {origin} "
                          f"(restart {job.restarts} of {job.max_restarts})")
            if job.state == JobState.PAUSED:
                job.state = JobState.RUNNING
            rt.relaunch_at = time.monotonic() + self.options.restart_delay_seconds
            self.store.save(job)
            self._update_job_gauge()
            log(f"{job.id}: {job.reason}")
            return
        self.runtime.pop(job.id, None)
        self._finish(job, JobState.FAILED, f"worker group exited with code {code}{self._last_error(job)}; "
                                           f"restart budget used up ({job.restarts} of {job.max_restarts})")

    @staticmethod
    def _checkpoints(job: JobRecord) -> Path:
        return Path(job.checkpoint_dir) if job.checkpoint_dir else Path(job.run_dir) / "checkpoints"

    def _last_error(self, job: JobRecord) -> str:
        if job.last_error:
            return f" ({job.last_error.strip().splitlines()[-1][:300]})"
        tail = tail_lines(self.store.log_path(job.id), 80).splitlines()
        errors = [line for line in tail if "Error" in line or "error:" in line]
        return f" (log: {errors[-1].strip()[:300]})" if errors else ""

    def _set_state(self, job: JobRecord, state: JobState, reason: str) -> None:
        job.state = state
        job.reason = reason
        self.store.save(job)
        self._update_job_gauge()
        log(f"{job.id} {state.value}: {reason}")

    def _finish(self, job: JobRecord, state: JobState, reason: str) -> None:
        job.finished_at = time.time()
        job.pid = None
        self._set_state(job, state, reason)

    def _job_counts(self) -> dict[str, int]:
        counts = {state.value: 0 for state in JobState}
        for job in list(self.jobs.values()):
            counts[job.state.value] += 1
        return counts

    def _update_job_gauge(self) -> None:
        self.metrics.set_job_counts(self._job_counts())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="alexserve supervisor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", type=Path, default=Path(os.environ.get(ENV_STATE_DIR, Path.home() / ".alexserve")),
                        help=f"job records, configs and logs (default: ${ENV_STATE_DIR} or ~/.alexserve)")
    parser.add_argument("--control", default=os.environ.get(ENV_SUPERVISOR, DEFAULT_CONTROL_ADDR),
                        help=f"ZeroMQ endpoint of the control socket (default: ${ENV_SUPERVISOR} or {DEFAULT_CONTROL_ADDR})")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="address of the /metrics and /healthz endpoint")
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT, help="port of /metrics and /healthz (0: any free port)")
    parser.add_argument("--token-file", type=Path, help="file holding the auth token (else $ALEXSERVE_TOKEN); needed for non-loopback binds")
    parser.add_argument("--metrics-public", action="store_true",
                        help="serve /metrics without the token even on a non-loopback address (e.g. inside a private compose network)")
    parser.add_argument("--max-running", type=int, default=1, help="worker groups running at once; other jobs wait queued")
    parser.add_argument("--stop-timeout", type=float, default=300.0, help="seconds a stopping job may take before it is killed")
    parser.add_argument("--restart-delay", type=float, default=1.0, help="seconds between a worker death and the relaunch")
    parser.add_argument("--worker-module", default=process.WORKER_MODULE, help=argparse.SUPPRESS)  # tests run a stand-in
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        token = read_token(args.token_file)
        check_binds(args.control, args.metrics_host, token)
    except AuthError as err:
        print(f"alexserve supervisor: {err}", file=sys.stderr)
        return 2
    if args.max_running < 1:
        print("alexserve supervisor: --max-running must be at least 1", file=sys.stderr)
        return 2
    options = ServerOptions(
        state_dir=args.state_dir.expanduser(), control_addr=args.control, metrics_host=args.metrics_host,
        metrics_port=args.metrics_port, token=token, metrics_public=args.metrics_public, max_running=args.max_running,
        stop_timeout_seconds=args.stop_timeout, restart_delay_seconds=args.restart_delay, worker_module=args.worker_module,
    )
    supervisor = Supervisor(options)
    try:
        supervisor.start()
    except (RuntimeError, OSError, zmq.ZMQError) as err:
        print(f"alexserve supervisor: cannot start: {err}", file=sys.stderr)
        supervisor.close()
        return 1
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    supervisor.serve_forever()
    log("shut down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
