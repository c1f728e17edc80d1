"""Divergence and chance level, judged in-process: the guard, the chance test, the history's flag, and the
supervisor's verdict on a diverged report.

The worker, the ranks and the supervised job end to end are in tests/integration/test_divergence.py.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from pydantic import ValidationError

from alexserve.config import TrainConfig
from alexserve.contract.worker_messages import ErrorEvent, MessageError, parse_report
from alexserve.parallel.topology import Topology
from alexserve.supervisor.jobs import JobRecord, JobState
from alexserve.supervisor.service import JobRuntime, ServerOptions, Supervisor
from alexserve.train.divergence import DivergenceGuard, DivergenceMonitor, near_chance
from alexserve.train.history import EpochRecord, History, read_history

# ------------------------------------------------------------------ the guard


def test_guard_passes_losses_of_a_run_that_learns():
    guard = DivergenceGuard(num_classes=10, factor=10.0)
    for loss in (2.4, 3.1, 9.0, 2.0, 1.2, 0.4, 0.01, 22.0):  # a burst up to 9 x ln(10) is still training
        assert guard.problem(loss) is None, loss


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_guard_stops_on_a_loss_that_is_not_finite(bad):
    guard = DivergenceGuard(num_classes=10, factor=10.0)
    assert guard.problem(2.3) is None
    problem = guard.problem(bad)
    assert problem is not None and str(bad) in problem


def test_guard_stops_on_a_first_loss_that_is_not_finite():
    assert DivergenceGuard(num_classes=1000, factor=10.0).problem(math.nan) is not None


def test_guard_stops_far_above_the_start():
    guard = DivergenceGuard(num_classes=10, factor=10.0)
    assert guard.problem(5.0) is None  # the start: 5.0, above ln(10)
    assert guard.problem(49.9) is None
    problem = guard.problem(50.1)
    assert problem is not None and "50.1" in problem and "10 times" in problem


def test_guard_limit_never_falls_below_the_uninformed_loss():
    """A lucky tiny first loss must not make the next ordinary loss look like a divergence."""
    guard = DivergenceGuard(num_classes=100, factor=10.0)
    assert guard.problem(0.01) is None
    assert guard.limit == pytest.approx(10 * math.log(100))
    assert guard.problem(40.0) is None and guard.problem(46.1) is not None


def test_factor_is_validated():
    assert TrainConfig().divergence_loss_factor == 10.0
    for bad in (1.0, 0.5, math.inf):
        with pytest.raises(ValidationError, match="divergence_loss_factor"):
            TrainConfig(divergence_loss_factor=bad)
    with pytest.raises(ValueError):
        DivergenceGuard(num_classes=10, factor=1.0)


# ------------------------------------------------------------------ chance level and the history


@pytest.mark.parametrize(
    "error, classes, expected",
    [
        (0.90, 10, True),
        (0.81, 10, True),
        (0.80, 10, False),
        (0.30, 10, False),
        (math.nan, 10, True),
        (0.999, 1000, True),
        (0.997, 1000, False),
        (0.30, 2, True),
        (0.20, 2, False),  # 2 classes: twice chance is perfection, so the bar is 75% accuracy
    ],
)
def test_near_chance(error, classes, expected):
    assert near_chance(error, classes) is expected


def test_chance_warning_at_paper_size_says_how_to_leave_the_papers_recipe():
    from alexserve.train.divergence import chance_warning

    reduced, paper = chance_warning(0.9, 10), chance_warning(0.9, 10, paper_sized=True)
    assert "chance level for 10 classes" in reduced and "init_scheme" not in reduced
    assert paper.startswith(reduced) and "--set model.init_scheme=he" in paper and "model.input_scaling=unit" in paper


def test_history_records_near_chance_and_reads_older_lines(tmp_path):
    fields = dict(
        step=8,
        train_loss=2.3,
        train_top1_error=0.9,
        val_top1_error=0.9,
        val_top5_error=0.5,
        val_top1_error_10crop=None,
        val_top5_error_10crop=None,
        lr=0.01,
        epoch_seconds=1.0,
    )
    history = History(tmp_path)
    history.append(EpochRecord(epoch=1, near_chance=True, **fields))
    older = {"epoch": 2, **fields, "timestamp": 1.0}  # written before the field existed
    with open(tmp_path / "history.jsonl", "a") as f:
        f.write(json.dumps(older) + "\n")
    first, second = read_history(tmp_path)
    assert first.near_chance is True
    assert json.loads((tmp_path / "history.jsonl").read_text().splitlines()[0])["near_chance"]
    assert second.near_chance is None


ONE_PAIR = Topology(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), backend="gloo")


@pytest.mark.parametrize(
    "losses",
    [
        [2.4, 3.1, 9.0, 2.0, 0.4, 22.0],  # learns: never diverged
        [2.3, 2.0, math.nan, 1.0],  # NaN at step 3
        [2.3, 2.0, 30.0, math.nan],  # runaway at step 3, then NaN: step 3 is named
        [math.inf, 2.3, 2.0],  # not finite at the very first step
        [50.0, 400.0, 501.0],  # a high first loss raises the limit to 500
    ],
)
def test_the_device_monitor_judges_as_the_guard_does(losses):
    # No process group exists here: with one pair the verdict needs no collective, or it would raise.
    guard = DivergenceGuard(num_classes=10, factor=10.0)
    monitor = DivergenceMonitor(num_classes=10, factor=10.0, device=torch.device("cpu"))
    expected = None
    for step, loss in enumerate(losses, start=1):
        monitor.observe(torch.tensor(loss, dtype=torch.float32), step)
        problem = guard.problem(loss)
        if expected is None and problem is not None:
            expected = (step, problem)
    verdict = monitor.verdict(ONE_PAIR)
    if expected is None:
        assert verdict is None
    else:
        assert verdict is not None and verdict[0] == expected[0], (verdict, expected)
        assert verdict[1].split(" (")[0][:14] == expected[1].split(" (")[0][:14], (verdict, expected)


def test_observing_reads_nothing_back(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("observe read a tensor back")

    monitor = DivergenceMonitor(num_classes=10, factor=10.0, device=torch.device("cpu"))
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    for step in range(1, 5):
        monitor.observe(torch.tensor(2.0 * step), step)
    monkeypatch.undo()
    assert monitor.verdict(ONE_PAIR) is None


# ------------------------------------------------------------------ the supervisor


def test_error_event_reason_is_bounded():
    event = ErrorEvent(job_id="job-1", message="training diverged", reason="diverged")
    assert parse_report(event.to_bytes()).reason == "diverged"
    assert parse_report(ErrorEvent(job_id="job-1", message="x").to_bytes()).reason == "error"
    with pytest.raises(MessageError, match="reason"):
        parse_report(b'{"kind": "error", "job_id": "job-1", "message": "x", "reason": "gremlins"}')


class _Exited:
    pid = 1

    def poll(self):
        return 1


@pytest.mark.parametrize("reason", ["diverged", "error"])
def test_supervisor_fails_a_diverged_job_without_relaunching(tmp_path, reason):
    sup = Supervisor(ServerOptions(state_dir=tmp_path / "state"))
    # No sockets in this test (start() is not called): reports are handed over directly.
    job = JobRecord(id="job-1", spec={}, run_dir=str(tmp_path / "run"), max_restarts=2, state=JobState.RUNNING)
    sup.jobs[job.id], sup.runtime[job.id] = job, JobRuntime(proc=_Exited())
    message = "[alexserve rank 0] training diverged at step 2, learning rate 6.25: the loss is nan. ..."
    for rank in (0, 1):  # every rank reports; the job counts once
        sup.channels.handle_report(ErrorEvent(job_id=job.id, rank=rank, message=message, reason=reason))
    sup.lifecycle.on_exit(job, sup.runtime[job.id], 1)
    divergences = sup.metrics.registry.get_sample_value("alexserve_train_divergences_total")
    if reason == "diverged":
        assert job.state == JobState.FAILED and job.reason == message
        assert job.restarts == job.restarts_total == 0 and job.id not in sup.runtime
        assert divergences == 1 and sup.metrics.registry.get_sample_value("alexserve_worker_restarts_total") == 0
    else:  # any other failure keeps its restart budget
        assert job.state == JobState.RUNNING and job.restarts == 1 and divergences == 0
