"""The control verbs: one handler per request of `control_messages.REQUESTS`.

`ControlVerbs.handle_request` turns one request frame into one reply frame:
decode, check the token, validate, dispatch on the verb, count the outcome in
alexserve_control_requests_total. A request that cannot be done (an unknown
job, a verb that does not apply to the job's state, an invalid spec) gets an
error reply naming why; nothing a client sends can stop the supervisor.
"""

from __future__ import annotations

import logging
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
from alexserve.supervisor.jobs import JobRecord, tail_lines
from alexserve.supervisor.lifecycle import JobLifecycle
from alexserve.supervisor.metrics import INVALID_VERB, SupervisorMetrics
from alexserve.supervisor.options import ServerOptions
from alexserve.supervisor.spec import SpecError, spec_from_tree
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
            return error_reply("unauthorized: this supervisor requires a token (ALEXSERVE_TOKEN or --token-file)")
        try:
            request = validate_request(tree)
            result = self.handlers[request.verb](request)
        except (MessageError, RequestError, SpecError) as err:
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
        config_tree = request.spec.get("config")
        config_train = config_tree.get("train", {}) if isinstance(config_tree, dict) else {}
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
        job = JobRecord(
            id=job_id,
            name=spec.name,
            spec=request.spec,
            run_dir=str(run_dir),
            checkpoint_dir=str(config.train.checkpoints),
            max_restarts=spec.max_restarts,
            num_pairs=spec.num_pairs,
            reason="waiting for a free slot",
        )
        self.lifecycle.jobs[job_id] = job
        self.lifecycle.save(job)
        log.info(f"{job_id} submitted ({request.origin}), run dir {run_dir}")
        self.lifecycle.tick()  # launch at once when a slot is free
        return job.summary()

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
        job.restarts = 0
        job.finished_at = None
        job.exit_code = None
        checkpoint = self.lifecycle.newest_checkpoint(job)
        self.lifecycle.set_state(job, _S.QUEUED, f"resumed: continues from checkpoint step {checkpoint}")
        self.lifecycle.tick()
        return {"id": job.id, "state": job.state.value, "requested": "resume"}

    def verb_stop(self, request) -> dict[str, Any]:
        job = self._job(request.job_id)
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
