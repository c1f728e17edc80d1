"""The job state machine as data: every state, every allowed move, and the one function that makes a move.

    queued ----launch----> running <--pause/resume--> paused
    queued ----launch failed----------------------------------> failed
    queued ----stop----> stopped         (never launched: nothing to checkpoint)
    running|paused ----stop----> stopping ----exit 0----> stopped
                                 stopping ----exit != 0, or no exit in time----> failed
    running|paused ----exit 0----> completed
    running|paused ----worker died----> running   (the same state: relaunched from the newest
                                                   checkpoint, restarts += 1; a paused job runs again)
    running|paused ----worker died, budget used up----> failed
    running|paused|stopping ----diverged----> failed  (at once: a relaunch would diverge again,
                                                       so the restart budget is left alone)
    running|paused|stopping ----supervisor exited----> failed  ("interrupted")
    queued|running|paused|stopping ----cancel----> cancelled  (the worker group is killed)
    stopped|failed|cancelled ----resume----> queued  (relaunched from the newest checkpoint)

`completed` has no way out. `stopped` is a final state beside `completed` and
`failed`: a job stopped on request exited cleanly after a checkpoint.

`transition(job, state)` is the only code that assigns a job's state; it
raises `IllegalTransition`, naming both states, for any move not in
`TRANSITIONS` (staying in the same state is not a move).
"""

from __future__ import annotations

from enum import Enum
from typing import Protocol


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


_S = JobState
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    _S.QUEUED: frozenset({_S.RUNNING, _S.FAILED, _S.STOPPED, _S.CANCELLED}),
    _S.RUNNING: frozenset({_S.PAUSED, _S.STOPPING, _S.COMPLETED, _S.FAILED, _S.CANCELLED}),
    _S.PAUSED: frozenset({_S.RUNNING, _S.STOPPING, _S.COMPLETED, _S.FAILED, _S.CANCELLED}),
    _S.STOPPING: frozenset({_S.STOPPED, _S.FAILED, _S.CANCELLED}),
    _S.STOPPED: frozenset({_S.QUEUED}),
    _S.COMPLETED: frozenset(),
    _S.FAILED: frozenset({_S.QUEUED}),
    _S.CANCELLED: frozenset({_S.QUEUED}),
}
"""Allowed moves: TRANSITIONS[from] holds every state a job in `from` may go to."""

ACTIVE_STATES = frozenset({_S.RUNNING, _S.PAUSED, _S.STOPPING})
"""A worker group may be alive (or about to be relaunched): the job holds a slot."""
RESUMABLE_STATES = frozenset(state for state, targets in TRANSITIONS.items() if _S.QUEUED in targets)
"""Where `resume` applies: the states that may go back to the queue."""
FINAL_STATES = frozenset(state for state, targets in TRANSITIONS.items() if targets <= {_S.QUEUED})
"""Nothing happens to a job here unless a user resumes it."""


class IllegalTransition(RuntimeError):
    """A state change the table does not allow: a bug in the supervisor, never a user error."""


class HasState(Protocol):
    id: str
    state: JobState


def transition(job: HasState, to: JobState) -> JobState:
    """Moves `job` to `to` when TRANSITIONS allows it; returns the state it left."""
    was = job.state
    if to not in TRANSITIONS[was]:
        allowed = ", ".join(sorted(state.value for state in TRANSITIONS[was])) or "none"
        raise IllegalTransition(
            f"{job.id}: no transition from {was.value} to {to.value} (allowed from {was.value}: {allowed})"
        )
    job.state = to
    return was
