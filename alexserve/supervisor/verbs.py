"""The control verbs: one handler per request of `control_messages.REQUESTS`.

`ControlVerbs.handle_request` turns one request frame into one reply frame:
decode, check the token, validate, dispatch on the verb, count the outcome in
alexserve_control_requests_total. A request that cannot be done (an unknown
job, a verb that does not apply to the job's state, an invalid spec) gets an
error reply naming why; nothing a client sends can stop the supervisor. A
request without the right token is refused and logged in one line (at most one
such line every few seconds), never with a traceback.

`submit` places the job's folders below the runs root and refuses one that
another recorded job uses (`job_paths.py`), unless the spec `continues` that
job; a job that failed to be recorded (a full or read-only disk) is refused
with the error and leaves nothing behind.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alexserve.contract.worker_messages import (
    CheckpointNowCommand,
    Message,
    MessageError,
    PauseCommand,
    ResumeCommand,
    StopCommand,
)
from alexserve.supervisor.auth import tokens_match
from alexserve.supervisor.channels import WorkerChannels
from alexserve.supervisor.control_messages import (
    VERBS,
    decode_request_tree,
    error_reply,
    ok_reply,
    validate_request,
)
from alexserve.supervisor.job_paths import PathRefused, check_clear_of, check_unshared, folder_below
from alexserve.supervisor.jobs import JobRecord, tail_lines
from alexserve.supervisor.lifecycle import JobLifecycle
from alexserve.supervisor.metrics import INVALID_VERB, SupervisorMetrics
from alexserve.supervisor.options import ServerOptions
from alexserve.supervisor.quiet_log import RateLimitedLog
from alexserve.supervisor.spec import JobSpec, SpecError, spec_from_tree
from alexserve.supervisor.states import FINAL_STATES, RESUMABLE_STATES, JobState

log = logging.getLogger(__name__)
_S = JobState


class RequestError(Exception):
    """A request that cannot be done; the message goes back to the client."""


class ControlVerbs:
    """Answers control requests; `handlers` maps every verb of VERBS to its `verb_<name>` method."""

    def __init__(
        self,
        options: ServerOptions,
        lifecycle: JobLifecycle,
        channels: WorkerChannels,
        metrics: SupervisorMetrics,
        health: Callable[[], dict[str, Any]],
    ) -> None:
        self.options = options
        self.lifecycle = lifecycle
        self.channels = channels
        self.metrics = metrics
        self.health = health
        self.store = lifecycle.store
        self.noise = RateLimitedLog(log)
        self.handlers: dict[str, Callable[[Message], dict[str, Any]]] = {
            verb: getattr(self, f"verb_{verb}") for verb in VERBS
        }

    def handle_request(self, frames: list[bytes]) -> bytes:
        """One request (its frames) -> one reply frame."""

        def count(verb: Any, outcome: str) -> None:
            label = verb if isinstance(verb, str) and verb in self.handlers else INVALID_VERB
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
            shown = verb[:32] if isinstance(verb, str) else "(none)"
            self.noise("unauthorized", f"refused a control request without the right token (verb {shown!r})")
            return error_reply("unauthorized: this supervisor requires a token (ALEXSERVE_TOKEN or --token-file)")
        try:
            request = validate_request(tree)
            result = self.handlers[request.verb](request)
        except (MessageError, RequestError, SpecError, PathRefused) as err:
            count(verb, "error")
            return error_reply(str(err))
        count(verb, "ok")
        return ok_reply(result)

    def _job(self, job_id: str) -> JobRecord:
        job = self.lifecycle.jobs.get(job_id)
        if job is None:
            raise RequestError(f"no job {job_id!r}; `alexserve job list` shows the known ones")
        return job

    # ------------------------------------------------------------ one method per verb

    def verb_ping(self, request) -> dict[str, Any]:
        return self.health()

    def verb_submit(self, request) -> dict[str, Any]:
        spec = spec_from_tree(request.spec, request.origin)
        job_id = self.store.next_id(self.lifecycle.jobs)
        run_dir, checkpoint_dir, base = self._job_folders(spec, request.spec, job_id)
        config = spec.config.model_copy(deep=True)
        config.train.run_dir = run_dir
        config.train.checkpoint_dir = checkpoint_dir
        job = JobRecord(
            id=job_id,
            name=spec.name,
            spec=request.spec,
            run_dir=str(run_dir),
            checkpoint_dir=str(config.train.checkpoints),
            # Unique beyond this state dir: a job id alone repeats when a state dir starts afresh.
            run_id=(base.run_id or base.id) if base is not None else f"{job_id}.{secrets.token_hex(4)}",
            continues=base.id if base is not None else None,
            max_restarts=spec.max_restarts,
            num_pairs=spec.num_pairs,
            reason="waiting for a free slot" if base is None else f"waiting for a free slot; continues {base.id}",
        )
        try:
            self.store.job_dir(job_id).mkdir(parents=True, exist_ok=False)
            self.store.write_config(job_id, config.model_dump(mode="json"))
            self.store.save(job)
            run_dir.mkdir(parents=True, exist_ok=True)  # claimed now: later symlink tricks show at launch
        except OSError as err:
            shutil.rmtree(self.store.job_dir(job_id), ignore_errors=True)
            raise RequestError(f"could not record the job: {err}; nothing submitted") from None
        self.lifecycle.jobs[job_id] = job
        self.lifecycle.update_job_gauge()
        log.info(f"{job_id} submitted ({request.origin}), run dir {run_dir}, run id {job.run_id}")
        self.lifecycle.tick()  # launch at once when a slot is free
        return job.summary()

    def _job_folders(
        self, spec: JobSpec, tree: dict[str, Any], job_id: str
    ) -> tuple[Path, Path | None, JobRecord | None]:
        """(run dir, checkpoint dir or None for run_dir/checkpoints, the job continued or None), checked."""
        root = self.lifecycle.runs_root
        config_tree = tree.get("config")
        config_train = config_tree.get("train", {}) if isinstance(config_tree, dict) else {}
        given = spec.run_dir
        if given is None and isinstance(config_train, dict) and "run_dir" in config_train:
            given = spec.config.train.run_dir
        field = "run_dir" if spec.run_dir is not None else "config.train.run_dir"
        run_dir = folder_below(root, given, field) if given is not None else None
        checkpoint_dir = spec.config.train.checkpoint_dir
        if checkpoint_dir is not None:
            checkpoint_dir = folder_below(root, checkpoint_dir, "config.train.checkpoint_dir")
        base = None
        if spec.continues is not None:
            base = self._continued(spec.continues)
            base_run = Path(base.run_dir).resolve()
            base_checkpoints = Path(base.checkpoint_dir or base_run / "checkpoints").resolve()
            if run_dir is not None and run_dir != base_run:
                raise PathRefused(f"{field} {run_dir}: a job that continues {base.id} uses its run dir {base_run}")
            if checkpoint_dir is not None and checkpoint_dir != base_checkpoints:
                raise PathRefused(
                    f"config.train.checkpoint_dir {checkpoint_dir}: a job that continues {base.id} "
                    f"uses its checkpoints {base_checkpoints}"
                )
            run_dir = base_run
            checkpoint_dir = None if base_checkpoints == base_run / "checkpoints" else base_checkpoints
        if run_dir is None:
            run_dir = root / job_id
        folders = {"run_dir": run_dir}
        if checkpoint_dir is not None:
            folders["checkpoint_dir"] = checkpoint_dir
        run_id = (base.run_id or base.id) if base is not None else None
        check_unshared(folders, self.lifecycle.jobs.values(), run_id)
        check_clear_of(folders, self.store.jobs_dir)
        return run_dir, checkpoint_dir, base

    def _continued(self, job_id: str) -> JobRecord:
        """The job a spec `continues`: it must have ended, and no other job may continue it already."""
        base = self.lifecycle.jobs.get(job_id)
        if base is None:
            raise RequestError(f"continues: no job {job_id!r}; `alexserve job list` shows the known ones")
        if base.state not in FINAL_STATES:
            raise RequestError(f"continues: {base.id} is {base.state.value}; stop it (or let it end) first")
        successor = self._successor(base)
        if successor is not None:
            raise RequestError(f"continues: {base.id} is already continued by {successor.id}; continue that one")
        return base

    def _successor(self, job: JobRecord) -> JobRecord | None:
        return next((j for j in self.lifecycle.jobs.values() if j.continues == job.id), None)

    def verb_list(self, request) -> dict[str, Any]:
        ordered = sorted(self.lifecycle.jobs.values(), key=lambda j: (j.created_at, j.id))
        return {"jobs": [j.summary() for j in ordered]}

    def verb_status(self, request) -> dict[str, Any]:
        job = self._job(request.job_id)
        result = job.model_dump(mode="json")
        result["log_path"] = str(self.store.log_path(job.id))
        result["config_path"] = str(self.store.config_path(job.id))
        result["newest_checkpoint_step"] = self.lifecycle.newest_checkpoint(job)
        rt = self.lifecycle.runtime.get(job.id)
        ranks = sorted(rt.rank_steps.items()) if rt else []
        result["ranks"] = {str(r): {"step": s, "state": rt.rank_states.get(r)} for r, s in ranks}
        result["pause_requested"] = bool(rt and rt.pause_wanted)
        return result

    def verb_pause(self, request) -> dict[str, Any]:
        job = self._job(request.job_id)
        if job.state not in (_S.RUNNING, _S.PAUSED):
            raise RequestError(f"{job.id} is {job.state.value}; only a running job can be paused")
        rt = self.lifecycle.runtime[job.id]
        if job.state == _S.RUNNING and not rt.pause_wanted:
            rt.pause_wanted = True
            self.channels.command(job, PauseCommand)
        return {"id": job.id, "state": job.state.value, "requested": "pause"}

    def verb_resume(self, request) -> dict[str, Any]:
        job = self._job(request.job_id)
        if job.state in (_S.RUNNING, _S.PAUSED):
            rt = self.lifecycle.runtime[job.id]
            if rt.pause_wanted or job.state == _S.PAUSED:
                rt.pause_wanted = False
                self.channels.command(job, ResumeCommand)
            return {"id": job.id, "state": job.state.value, "requested": "resume"}
        if job.state not in RESUMABLE_STATES:
            raise RequestError(
                f"{job.id} is {job.state.value}; resume applies to paused, stopped, failed or cancelled jobs"
            )
        successor = self._successor(job)
        if successor is not None:  # its folders are successor's now: two jobs never write to one folder
            raise RequestError(f"{job.id} was continued by {successor.id}, which owns its folders now; resume that one")
        job.restarts = 0
        job.finished_at = None
        job.exit_code = None
        checkpoint = self.lifecycle.newest_checkpoint(job)
        self.lifecycle.set_state(job, _S.QUEUED, f"resumed: continues from checkpoint step {checkpoint}")
        self.lifecycle.tick()
        return {"id": job.id, "state": job.state.value, "requested": "resume"}

    def verb_stop(self, request) -> dict[str, Any]:
        return self.stop_job(self._job(request.job_id))

    def stop_job(self, job) -> dict[str, Any]:
        """Queued: stopped at once; running or paused: asked to checkpoint and exit (`stopping`)."""
        if job.state == _S.QUEUED:
            self.lifecycle.finish(job, _S.STOPPED, "stopped before it was launched")
            return {"id": job.id, "state": job.state.value}
        if job.state == _S.STOPPING:
            return {"id": job.id, "state": job.state.value}
        if job.state not in (_S.RUNNING, _S.PAUSED):
            raise RequestError(f"{job.id} is {job.state.value}; only a queued, running or paused job can be stopped")
        rt = self.lifecycle.runtime[job.id]
        self.lifecycle.set_state(job, _S.STOPPING, "stop requested: checkpoint, then exit")
        rt.stop_deadline = time.monotonic() + self.options.stop_timeout_seconds
        if rt.relaunch_at is not None:  # between a death and its relaunch: nothing runs, the checkpoint is on disk
            rt.relaunch_at = None
            self.lifecycle.finish(job, _S.STOPPED, "stopped while waiting to relaunch")
        else:
            self.channels.command(job, StopCommand)
        return {"id": job.id, "state": job.state.value}

    def verb_cancel(self, request) -> dict[str, Any]:
        job = self._job(request.job_id)
        if job.state in FINAL_STATES:
            raise RequestError(f"{job.id} is already {job.state.value}")
        self.lifecycle.kill(job)
        self.lifecycle.finish(job, _S.CANCELLED, "cancelled on request: worker group killed")
        return {"id": job.id, "state": job.state.value}

    def verb_checkpoint_now(self, request) -> dict[str, Any]:
        job = self._job(request.job_id)
        if job.state != _S.RUNNING:
            raise RequestError(
                f"{job.id} is {job.state.value}; only a running job takes checkpoint-now "
                "(a paused one has nothing new to save; stop checkpoints too)"
            )
        command_id = self.channels.command(job, CheckpointNowCommand)
        return {"id": job.id, "state": job.state.value, "requested": "checkpoint_now", "command_id": command_id}

    def verb_logs(self, request) -> dict[str, Any]:
        job = self._job(request.job_id)
        path = self.store.log_path(job.id)
        return {"id": job.id, "path": str(path), "text": tail_lines(path, request.lines)}
