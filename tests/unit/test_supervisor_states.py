"""The job state machine: every move in the table works, every other one is refused by name, nothing bypasses it."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

from alexserve.supervisor.jobs import JobRecord
from alexserve.supervisor.states import (
    ACTIVE_STATES,
    FINAL_STATES,
    RESUMABLE_STATES,
    TRANSITIONS,
    IllegalTransition,
    JobState,
    transition,
)

SUPERVISOR = Path(__file__).resolve().parents[2] / "alexserve" / "supervisor"
LEGAL = sorted(((a, b) for a, targets in TRANSITIONS.items() for b in targets), key=lambda p: (p[0].value, p[1].value))
ILLEGAL = [(a, b) for a, b in itertools.product(JobState, JobState) if b not in TRANSITIONS[a]]


def pair_id(pair: tuple[JobState, JobState]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


def record(state: JobState) -> JobRecord:
    return JobRecord(id="job-7", spec={}, run_dir="/tmp/run", max_restarts=1, state=state)


def test_the_table_covers_every_state_and_only_states():
    assert set(TRANSITIONS) == set(JobState)
    assert all(targets <= set(JobState) for targets in TRANSITIONS.values())
    assert len(LEGAL) + len(ILLEGAL) == len(JobState) ** 2


@pytest.mark.parametrize("pair", LEGAL, ids=pair_id)
def test_every_legal_transition_moves_the_job(pair):
    was, to = pair
    job = record(was)
    assert transition(job, to) == was
    assert job.state == to


@pytest.mark.parametrize("pair", ILLEGAL, ids=pair_id)
def test_every_illegal_transition_is_refused_naming_both_states(pair):
    was, to = pair
    job = record(was)
    with pytest.raises(IllegalTransition, match=f"job-7: no transition from {was.value} to {to.value}"):
        transition(job, to)
    assert job.state == was


def test_staying_put_is_not_a_transition():
    assert all(state not in TRANSITIONS[state] for state in JobState)


def test_the_paths_the_supervisor_takes():
    # A diverged job goes running -> failed directly; a relaunch keeps it running; resume re-queues it.
    assert JobState.FAILED in TRANSITIONS[JobState.RUNNING]
    assert JobState.QUEUED in TRANSITIONS[JobState.FAILED]
    assert TRANSITIONS[JobState.COMPLETED] == frozenset()
    assert JobState.COMPLETED not in TRANSITIONS[JobState.STOPPING]  # a stop ends stopped, never completed


def test_derived_state_sets():
    assert RESUMABLE_STATES == {JobState.STOPPED, JobState.FAILED, JobState.CANCELLED}
    assert FINAL_STATES == RESUMABLE_STATES | {JobState.COMPLETED}
    assert ACTIVE_STATES == {JobState.RUNNING, JobState.PAUSED, JobState.STOPPING}
    assert not ACTIVE_STATES & FINAL_STATES


def state_assignments(path: Path) -> list[str]:
    """`x.state = ...` (or +=, or a tuple target) anywhere in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, (ast.AugAssign, ast.AnnAssign))
            else []
        )
        for target in targets:
            for leaf in ast.walk(target):
                if isinstance(leaf, ast.Attribute) and leaf.attr == "state" and isinstance(leaf.ctx, ast.Store):
                    found.append(f"{path.name}:{node.lineno}")
    return found


def test_no_state_is_assigned_outside_transition():
    found = [
        hit for path in sorted(SUPERVISOR.glob("*.py")) if path.name != "states.py" for hit in state_assignments(path)
    ]
    assert found == [], "assign job states only through states.transition"
    assert len(state_assignments(SUPERVISOR / "states.py")) == 1
