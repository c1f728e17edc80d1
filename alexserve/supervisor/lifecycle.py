"""Each job's worker group over its life: launch, reap, relaunch within the restart budget, kill.

Each job's worker group is `torchrun --nproc_per_node=2*num_pairs --max-restarts=0 ...
-m alexserve.worker --config JOB/config.json --resume` in a session of its own
(`process.launch_worker_group`). `tick` reaps exited groups and relaunches
them from their newest checkpoint within the restart budget, never a group
whose training diverged (that job fails with the worker's message and
alexserve_train_divergences_total counts it), kills a stopping group that
overran its stop timeout, and launches queued jobs while slots are free.
Cancel and shutdown kill the whole process tree, and a new supervisor marks
what a crashed one was running as interrupted, so no orphan workers remain.

Every state change goes through `states.transition`; `set_state` adds the
reason, saves the record and updates the alexserve_jobs gauge. A record that
cannot be saved (OSError: too many open files, a read-only or full disk, a
failed rename) is marked with the error (`write_error`, alexserve_state_write_errors_total)
and the service goes on; a failure while handling one job in `tick` is that
job's alone.

Each launch gets, in its environment, the job id, its run id (the identity its
checkpoints and history carry) and the job's channel secret (`secrets.token_hex`,
made once per job by this supervisor and never written to disk), which every
report and Hello must show (`channels.py`).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alexserve.checkpoint.naming import newest_committed_step
from alexserve.contract.names import ENV_CHANNEL_SECRET, ENV_JOB_ID, ENV_RUN_ID, WorkerExit
from alexserve.contract.worker_messages import Message, PauseCommand
from alexserve.supervisor import process
from alexserve.supervisor.job_paths import PathRefused, check_unmoved
from alexserve.supervisor.jobs import JobRecord, JobStore, tail_lines
from alexserve.supervisor.metrics import SupervisorMetrics
from alexserve.supervisor.options import ServerOptions
from alexserve.supervisor.states import ACTIVE_STATES, JobState, transition

log = logging.getLogger(__name__)


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


class JobLifecycle:
    """The job records and the worker groups behind them."""

    def __init__(self, options: ServerOptions, store: JobStore, metrics: SupervisorMetrics) -> None:
        self.options, self.store, self.metrics = options, store, metrics
        self.jobs: dict[str, JobRecord] = {}
        self.runtime: dict[str, JobRuntime] = {}
        self.runs_root = Path(options.runs_root or store.state_dir / "runs").expanduser().resolve()
        """Every job's folders live below it (`job_paths.py`)."""
        self.secrets: dict[str, str] = {}
        """Each launched job's channel secret (job id -> hex), made at its first launch; never persisted."""
        self.worker_env: dict[str, str] = {}
        """What every launched worker gets in its environment besides its job's: the channels' addresses."""
        self._tick_errors: dict[str, str] = {}  # the last error tick() logged for each job: logged once, not per tick
        self.drain_reports: Callable[[], None] = lambda: None
        """Reads the reports still queued; called before a group's exit is judged (its last steps, `stopped`)."""

    # ------------------------------------------------------------ records and states

    def recover(self) -> None:
        """Loads every job record; a job that was active when the last supervisor died is failed as interrupted."""
        records, problems = self.store.load_all()
        for problem in problems:
            log.info(problem)
        for record in records.values():
            if record.state in ACTIVE_STATES:
                was = transition(record, JobState.FAILED)
                record.reason = (
                    f"interrupted: the supervisor exited while the job was {was.value}; "
                    f"`alexserve job resume {record.id}` continues from its newest checkpoint"
                )
                record.finished_at = time.time()
                record.pid = None
                self.save(record)
            self.jobs[record.id] = record

    def save(self, job: JobRecord) -> bool:
        """Saves the record; on OSError marks it (`write_error`), counts and logs it, and returns False."""
        was = job.write_error
        try:
            job.write_error = None
            self.store.save(job)
        except OSError as err:
            job.write_error = f"{time.strftime('%Y-%m-%d %H:%M:%S')} could not save the job record: {err}"
            self.metrics.state_write_errors.inc()
            if was is None:
                log.info(f"{job.id}: {job.write_error}; the service goes on, and the next change saves it again")
            return False
        finally:
            self.update_job_gauge()
        if was is not None:
            log.info(f"{job.id}: job record saved again after: {was}")
        return True

    def set_state(self, job: JobRecord, state: JobState, reason: str) -> None:
        transition(job, state)
        job.reason = reason
        self.save(job)
        log.info(f"{job.id} {state.value}: {reason}")

    def finish(self, job: JobRecord, state: JobState, reason: str) -> None:
        job.finished_at = time.time()
        job.pid = None
        self.set_state(job, state, reason)

    def job_counts(self) -> dict[str, int]:
        counts = {state.value: 0 for state in JobState}
        for job in list(self.jobs.values()):
            counts[job.state.value] += 1
        return counts

    def update_job_gauge(self) -> None:
        self.metrics.set_job_counts(self.job_counts())

    @staticmethod
    def checkpoints(job: JobRecord) -> Path:
        return Path(job.checkpoint_dir) if job.checkpoint_dir else Path(job.run_dir) / "checkpoints"

    def newest_checkpoint(self, job: JobRecord) -> int | None:
        return newest_committed_step(self.checkpoints(job))

    def last_error(self, job: JobRecord) -> str:
        """` (the worker's last error line)`, or an error line from the log's tail, or nothing."""
        if job.last_error:
            return f" ({job.last_error.strip().splitlines()[-1][:300]})"
        tail = tail_lines(self.store.log_path(job.id), 80).splitlines()
        errors = [line for line in tail if "Error" in line or "error:" in line]
        return f" (log: {errors[-1].strip()[:300]})" if errors else ""

    # ------------------------------------------------------------ worker groups

    def tick(self) -> None:
        """Reaps exited groups, kills overdue stopping ones, relaunches due ones, launches queued jobs."""
        now = time.monotonic()
        for job in list(self.jobs.values()):
            with self._job_errors_logged(job):
                self._tick_job(job, now)
        slots = self.options.max_running - sum(1 for j in self.jobs.values() if j.state in ACTIVE_STATES)
        queued = sorted(
            (j for j in self.jobs.values() if j.state == JobState.QUEUED), key=lambda j: (j.created_at, j.id)
        )
        for job in queued[: max(slots, 0)]:
            with self._job_errors_logged(job):
                self.launch(job)

    @contextlib.contextmanager
    def _job_errors_logged(self, job: JobRecord):
        """An OSError while handling one job is that job's: it is marked and logged (once), the others go on."""
        try:
            yield
        except OSError as err:
            if self._tick_errors.get(job.id) != str(err):
                log.info(f"{job.id}: {err} (tried again at the next tick)")
            self._tick_errors[job.id] = str(err)
            job.write_error = job.write_error or f"{time.strftime('%Y-%m-%d %H:%M:%S')} {err}"
        else:
            self._tick_errors.pop(job.id, None)

    def _tick_job(self, job: JobRecord, now: float) -> None:
        rt = self.runtime.get(job.id)
        if rt is None:
            return
        if rt.proc is not None:
            code = rt.proc.poll()
            if code is not None:
                self.on_exit(job, rt, code)
            elif job.state == JobState.STOPPING and rt.stop_deadline is not None and now > rt.stop_deadline:
                self.kill(job)
                timeout = self.options.stop_timeout_seconds
                self.finish(job, JobState.FAILED, f"did not stop within {timeout:g}s; worker group killed")
        elif rt.relaunch_at is not None and now >= rt.relaunch_at:
            rt.relaunch_at = None
            self.launch(job)

    def launch(self, job: JobRecord) -> None:
        """Starts the job's worker group (first launch or relaunch); a failure to start fails the job."""
        try:
            check_unmoved(job)
        except PathRefused as err:
            self.runtime.pop(job.id, None)
            self.finish(job, JobState.FAILED, str(err))
            return
        rt = self.runtime.setdefault(job.id, JobRuntime())
        secret = self.secrets.setdefault(job.id, secrets.token_hex(32))
        env = {
            ENV_JOB_ID: job.id,
            ENV_RUN_ID: job.run_id or job.id,
            ENV_CHANNEL_SECRET: secret,
            **self.worker_env,
            process.MARK_ENV: str(self.store.state_dir),
        }
        try:
            rt.proc = process.launch_worker_group(
                self.store.config_path(job.id),
                self.store.log_path(job.id),
                env,
                self.options.worker_module,
                nproc_per_node=2 * job.num_pairs,
            )
        except OSError as err:
            self.runtime.pop(job.id, None)
            self.finish(job, JobState.FAILED, f"could not launch torchrun: {err}")
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
        if job.state != JobState.RUNNING:  # a relaunch keeps the job running
            transition(job, JobState.RUNNING)
        if job.attempts == 1 or job.reason.startswith(("waiting", "resumed")):
            job.reason = f"launched (attempt {job.attempts})"
        self.save(job)
        log.info(f"{job.id} launched: torchrun pid {rt.proc.pid}, attempt {job.attempts}")

    def on_exit(self, job: JobRecord, rt: JobRuntime, code: int) -> None:
        """Judges a worker group's exit: completed, stopped, diverged, relaunched, or failed."""
        self.drain_reports()  # the group's final reports (last steps, StateEvent stopped) before deciding
        stray = process.kill_job_processes(self.store.state_dir, job.id)  # workers torchrun failed to take down
        if stray:
            log.info(f"{job.id}: killed {len(stray)} worker process(es) that outlived torchrun: {stray}")
        rt.proc = None
        rt.identity = None
        job.exit_code = code
        job.pid = None
        if code != 0 and (rt.diverged is not None or code == WorkerExit.DIVERGED):
            # A relaunch would start from the same checkpoint with the same settings and diverge again:
            # fail now and leave the restart budget alone.
            self.runtime.pop(job.id, None)
            self.metrics.divergences.inc()
            reason = rt.diverged or f"training diverged (worker exit code {code}){self.last_error(job)}"
            self.finish(job, JobState.FAILED, reason)
            return
        if job.state == JobState.STOPPING:
            self.runtime.pop(job.id, None)
            if code == 0:
                reason = f"stopped on request at step {job.step}; newest checkpoint: step {self.newest_checkpoint(job)}"
                self.finish(job, JobState.STOPPED, reason)
            else:
                reason = f"worker group exited with code {code} while stopping{self.last_error(job)}"
                self.finish(job, JobState.FAILED, reason)
            return
        if code == 0:
            self.runtime.pop(job.id, None)
            self.finish(job, JobState.COMPLETED, f"completed at step {job.step}")
            return
        if job.restarts < job.max_restarts:
            self._schedule_relaunch(job, rt, code)
            return
        self.runtime.pop(job.id, None)
        self.finish(
            job,
            JobState.FAILED,
            f"worker group exited with code {code}{self.last_error(job)}; "
            f"restart budget used up ({job.restarts} of {job.max_restarts})",
        )

    def _schedule_relaunch(self, job: JobRecord, rt: JobRuntime, code: int) -> None:
        job.restarts += 1
        job.restarts_total += 1
        self.metrics.restarts.inc()
        checkpoint = self.newest_checkpoint(job)
        origin = f"checkpoint step {checkpoint}" if checkpoint is not None else "scratch (no checkpoint yet)"
        job.reason = (
            f"worker group exited with code {code}{self.last_error(job)}; relaunching from {origin} "
            f"(restart {job.restarts} of {job.max_restarts})"
        )
        if job.state == JobState.PAUSED:  # the relaunched group runs (and is paused again: rt.pause_wanted)
            transition(job, JobState.RUNNING)
        rt.relaunch_at = time.monotonic() + self.options.restart_delay_seconds
        self.save(job)
        log.info(f"{job.id}: {job.reason}")

    def kill(self, job: JobRecord) -> None:
        """Kills the job's worker group, if it has one, and forgets its runtime; records torchrun's exit status."""
        rt = self.runtime.pop(job.id, None)
        if rt is not None and rt.proc is not None:
            job.exit_code = process.kill_tree(rt.proc)

    def close(self) -> None:
        """Kills every worker group, then fails the jobs that were active, saying how to continue them."""
        for job in self.jobs.values():  # every group first: a failure to record one job must not spare another
            rt = self.runtime.get(job.id)
            if rt is not None and rt.proc is not None:
                try:
                    process.kill_tree(rt.proc)
                except OSError as err:
                    log.info(f"{job.id}: could not kill the worker group ({err}); the next supervisor kills it")
        for job in self.jobs.values():
            if job.state in ACTIVE_STATES:
                self.finish(
                    job,
                    JobState.FAILED,
                    "interrupted: the supervisor shut down while the job was "
                    f"{job.state.value}; `alexserve job resume {job.id}` continues from its newest checkpoint",
                )
        self.runtime.clear()
