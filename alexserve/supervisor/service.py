"""The supervisor service: one thread, one ZeroMQ poll, the parts wired together.

    supervisor = Supervisor(ServerOptions(state_dir=Path("~/.alexserve").expanduser()))
    supervisor.start()            # lock the state dir, kill leftovers, recover records, bind everything
    supervisor.serve_forever()    # until request_stop (SIGTERM/SIGINT in `alexserve supervisor`)

One thread runs everything that changes job state: a poll over the control
socket (REP: one request, one reply; `verbs.py`), the worker channels (the
report PULL and the command ROUTER; `channels.py`), then a tick of the job
lifecycle (reap, relaunch, launch queued jobs; `lifecycle.py`). /metrics and
/healthz are served from daemon threads that only read the registry
(`http_endpoint.py`: timeouts, a bounded number of connections).

Nothing a job, a worker or a disk does ends the loop: a failed write marks the
job it was for (`lifecycle.save`), and an unexpected error in one part of a
poll is logged and the next poll goes on.
"""

from __future__ import annotations

import fcntl
import logging
import time
import traceback
from typing import IO, Any

import zmq

from alexserve.supervisor import process
from alexserve.supervisor.auth import is_loopback_host
from alexserve.supervisor.channels import WorkerChannels, bounded_socket
from alexserve.supervisor.control_messages import SOCKET_MAX_MESSAGE_BYTES, error_reply
from alexserve.supervisor.http_endpoint import MetricsServer
from alexserve.supervisor.jobs import JobRecord, JobStore
from alexserve.supervisor.lifecycle import JobLifecycle, JobRuntime
from alexserve.supervisor.metrics import SupervisorMetrics
from alexserve.supervisor.options import ServerOptions
from alexserve.supervisor.states import JobState
from alexserve.supervisor.verbs import ControlVerbs

__all__ = ["JobRuntime", "ServerOptions", "Supervisor"]

log = logging.getLogger(__name__)

POLL_MILLISECONDS = 100


class Supervisor:
    """Owns the sockets, the poll loop, the state-dir lock and the HTTP endpoint; the parts do the work."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.store = JobStore(options.state_dir)
        self.metrics = SupervisorMetrics()
        self.lifecycle = JobLifecycle(options, self.store, self.metrics)
        self.channels = WorkerChannels(self.lifecycle, self.metrics)
        self.lifecycle.drain_reports = self.channels.drain_reports
        self.verbs = ControlVerbs(options, self.lifecycle, self.channels, self.metrics, self.health)
        self.started_at = time.time()
        self._stop_requested = False
        self._kill_now = False
        self._last_poll_error: tuple[str, str] | None = None
        self._lock_file: IO[str] | None = None
        self.context: zmq.Context | None = None
        self.control: zmq.Socket | None = None
        self.control_addr = ""
        self.http: MetricsServer | None = None
        self.poller = zmq.Poller()

    @property
    def jobs(self) -> dict[str, JobRecord]:
        return self.lifecycle.jobs

    @property
    def runtime(self) -> dict[str, JobRuntime]:
        return self.lifecycle.runtime

    # ------------------------------------------------------------ start-up and shut-down

    def start(self) -> None:
        """Locks the state dir, kills leftovers, recovers job records, binds every socket."""
        self._lock_state_dir()
        self.lifecycle.runs_root.mkdir(parents=True, exist_ok=True)
        leftovers = process.kill_leftovers(self.store.state_dir)
        if leftovers:
            log.info(f"killed {len(leftovers)} worker process(es) left by a previous supervisor: {leftovers}")
        self.lifecycle.recover()
        self.context = zmq.Context()
        self.control = bounded_socket(self.context, zmq.REP, SOCKET_MAX_MESSAGE_BYTES)
        self.control.bind(self.options.control_addr)
        self.control_addr = self.control.getsockopt_string(zmq.LAST_ENDPOINT)
        # Worker channels stay on loopback whatever the control bind: only local workers talk on them.
        self.channels.bind(self.context)
        self.lifecycle.worker_env = self.channels.worker_env()
        metrics_open = self.options.metrics_public or is_loopback_host(self.options.metrics_host)
        self.http = MetricsServer(
            self.options.metrics_host,
            self.options.metrics_port,
            self.metrics.registry,
            self.health,
            None if metrics_open else self.options.token,
            on_refused=self.metrics.http_connections_refused.inc,
        )
        self.http.start()
        for sock in (self.control, self.channels.reports, self.channels.commands):
            self.poller.register(sock, zmq.POLLIN)
        self.lifecycle.update_job_gauge()
        log.info(
            f"control {self.control_addr}, metrics http://{self.http.host}:{self.http.port}/metrics, "
            f"state {self.store.state_dir}, runs root {self.lifecycle.runs_root}, {len(self.jobs)} job(s) on record"
        )

    def _lock_state_dir(self) -> None:
        path = self.store.state_dir / "supervisor.lock"
        self._lock_file = open(path, "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another supervisor is using {self.store.state_dir} (lock {path} is held)") from None

    def request_stop(self, *_: Any) -> None:
        """The first request stops the jobs gracefully; a second one ends the grace period at once."""
        if self._stop_requested:
            self._kill_now = True
        self._stop_requested = True

    def serve_forever(self) -> None:
        try:
            while not self._stop_requested:
                self.serve_once(POLL_MILLISECONDS)
            self.stop_jobs_gracefully()
        finally:
            self.close()

    def stop_jobs_gracefully(self) -> None:
        """Stops every running or paused job as `alexserve job stop` does (checkpoint, exit, `stopped`), while
        serving, for at most `stop_grace_seconds`; close() then kills what is left and fails it."""
        grace = self.options.stop_grace_seconds
        active = [job for job in self.jobs.values() if job.state in (JobState.RUNNING, JobState.PAUSED)]
        if grace <= 0 or not active:
            return
        log.info(f"shutting down: stopping {len(active)} job(s) with a checkpoint, for at most {grace:g}s")
        for job in active:
            self._guarded(f"stopping {job.id}", lambda job=job: self.verbs.stop_job(job))
        deadline = time.monotonic() + grace
        while not self._kill_now and time.monotonic() < deadline:
            if not any(job.state == JobState.STOPPING for job in self.jobs.values()):
                return
            self.serve_once(POLL_MILLISECONDS)
        log.info("shutting down: the grace period is over; killing the jobs still stopping")

    def serve_once(self, timeout_ms: int) -> None:
        events = dict(self.poller.poll(timeout_ms))
        if self.control in events:
            self._serve_control()
        if self.channels.reports in events:
            self._guarded("reading reports", self.channels.drain_reports)
        if self.channels.commands in events:
            self._guarded("reading hellos", self.channels.drain_hellos)
        self._guarded("the job lifecycle tick", self.lifecycle.tick)

    def _guarded(self, what: str, step) -> None:
        """Runs one part of a poll; an error there is logged and the service goes on (the next poll retries)."""
        try:
            step()
        except Exception as err:  # a bug or an exhausted resource must not end the service
            if self._last_poll_error != (what, repr(err)):  # once, not ten times a second
                log.error(f"error in {what}: {err!r}\n{traceback.format_exc()}")
            self._last_poll_error = (what, repr(err))

    def close(self) -> None:
        """Kills every worker group (recording why), closes sockets and the HTTP server."""
        try:
            self.lifecycle.close()
        except Exception as err:  # the sockets and the lock are released whatever happened
            log.error(f"error while killing the worker groups: {err!r}\n{traceback.format_exc()}")
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
        uptime = round(time.time() - self.started_at, 3)
        return {"status": "ok", "uptime_seconds": uptime, "jobs": self.lifecycle.job_counts()}

    def _serve_control(self) -> None:
        try:
            frames = self.control.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            reply = self.verbs.handle_request(frames)
        except Exception as err:  # the server stays up whatever a request does
            log.error(f"internal error answering a request: {err!r}\n{traceback.format_exc()}")
            reply = error_reply(f"internal error: {err!r}"[:1000])
        try:
            self.control.send(reply)
        except zmq.ZMQError as err:  # the client went away; REP is ready for the next request either way
            log.info(f"control reply not sent: {err}")
