"""Training that fails says so: the divergence guard, its exit code, the supervisor's verdict, chance-level runs."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from alexserve.config import TrainConfig
from alexserve.contract.names import WorkerExit
from alexserve.parallel.topology import Topology
from alexserve.supervisor.jobs import JobRecord, JobState
from alexserve.contract.worker_messages import ErrorEvent, MessageError, parse_report
from alexserve.supervisor.server import JobRuntime, ServerOptions, Supervisor
from alexserve.checkpoint.store import CheckpointStore
from alexserve.train.divergence import (
    DivergenceGuard,
    near_chance,
    weights_finite,
    worst_loss_across_pairs,
)
from alexserve.train.history import EpochRecord, History, read_history
from helpers.processes import free_port, rank_env, wait_all
from helpers.supervisor import USE_FAKE_WORKER, supervisor, tiny_spec  # noqa: F401 (fixture)

DIVERGED = re.compile(r"training diverged at step (\d+), learning rate [0-9.e+-]+")


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


@pytest.mark.parametrize("error, classes, expected", [
    (0.90, 10, True), (0.81, 10, True), (0.80, 10, False), (0.30, 10, False), (math.nan, 10, True),
    (0.999, 1000, True), (0.997, 1000, False),
    (0.30, 2, True), (0.20, 2, False),  # 2 classes: twice chance is perfection, so the bar is 75% accuracy
])
def test_near_chance(error, classes, expected):
    assert near_chance(error, classes) is expected


def test_chance_warning_at_paper_size_says_how_to_leave_the_papers_recipe():
    from alexserve.train.divergence import chance_warning

    reduced, paper = chance_warning(0.9, 10), chance_warning(0.9, 10, paper_sized=True)
    assert "chance level for 10 classes" in reduced and "init_scheme" not in reduced
    assert paper.startswith(reduced) and "--set model.init_scheme=he" in paper and "model.input_scaling=unit" in paper


def test_history_records_near_chance_and_reads_older_lines(tmp_path):
    fields = dict(step=8, train_loss=2.3, train_top1_error=0.9, val_top1_error=0.9, val_top5_error=0.5,
                  val_top1_error_10crop=None, val_top5_error_10crop=None, lr=0.01, epoch_seconds=1.0)
    history = History(tmp_path)
    history.append(EpochRecord(epoch=1, near_chance=True, **fields))
    older = {"epoch": 2, **fields, "timestamp": 1.0}  # written before the field existed
    with open(tmp_path / "history.jsonl", "a") as f:
        f.write(json.dumps(older) + "\n")
    first, second = read_history(tmp_path)
    assert first.near_chance is True and json.loads((tmp_path / "history.jsonl").read_text().splitlines()[0])["near_chance"]
    assert second.near_chance is None


# ------------------------------------------------------------------ agreement across pairs (4 gloo ranks)


def _pairs_rank(rank: int, world_size: int, store_path: str, out_dir: str) -> None:
    """Pair 0 sees a normal loss, pair 1 a runaway one, then a NaN; rank 3's weights go bad."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world_size), rank=rank, world_size=world_size)
    try:
        topology = Topology(rank=rank, world_size=world_size, local_rank=rank, device=torch.device("cpu"), backend="gloo")
        pair_loss = [2.0, 500.0][topology.pair]
        worst = worst_loss_across_pairs(pair_loss, topology)
        nan = worst_loss_across_pairs(math.nan if topology.pair == 1 else 2.0, topology)
        module = torch.nn.Linear(3, 2)
        finite_before = weights_finite(module, topology)
        if rank == 3:
            with torch.no_grad():
                module.weight[0, 0] = math.inf
        finite_after = weights_finite(module, topology)
        torch.save({"worst": worst, "nan": nan, "finite_before": finite_before, "finite_after": finite_after},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_every_rank_judges_the_same_loss_and_weights_across_pairs(tmp_path):
    world_size = 4
    mp.spawn(_pairs_rank, args=(world_size, str(tmp_path / "store"), str(tmp_path)), nprocs=world_size, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]
    for rank, result in enumerate(results):
        assert result["worst"] == 500.0, (rank, result)
        assert math.isnan(result["nan"]), (rank, result)
        assert result["finite_before"] is True and result["finite_after"] is False, (rank, result)


def test_one_pair_needs_no_collective():
    topology = Topology(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), backend="gloo")
    assert worst_loss_across_pairs(3.5, topology) == 3.5  # no process group exists here: it would raise


# ------------------------------------------------------------------ the worker: exit code 4, message, no checkpoint after


def diverging_run(tmp_path: Path, world_size: int, *overrides: str, timeout: float = 240) -> list[tuple[int, str, str]]:
    """The demo config (its data made in tmp_path/runs/demo) in `world_size` worker processes at learning rate 100."""
    port = free_port()
    argv = [sys.executable, "-m", "alexserve.worker", "--set", "optim.learning_rate=100", "--set", "train.max_steps=20",
            "--set", "train.checkpoint_every_steps=1", *overrides]
    procs = [subprocess.Popen(argv, env=rank_env(r, world_size, port), cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(world_size)]
    return wait_all(procs, timeout)


def check_diverged(results: list[tuple[int, str, str]], checkpoints: Path) -> int:
    """Asserts every rank stopped at the same early step with the message; returns that step."""
    steps = set()
    for rank, (code, _, err) in enumerate(results):
        assert code == WorkerExit.DIVERGED, f"rank {rank} exited {code}:\n{err[-3000:]}"
        match = DIVERGED.search(err)
        assert match, f"rank {rank}: no divergence message:\n{err[-3000:]}"
        steps.add(int(match.group(1)))
        assert "newest good checkpoint" in err and "Try: a lower learning rate" in err and "optim.learning_rate=10 " in err
    assert len(steps) == 1, f"ranks stopped at different steps: {steps}"
    step = steps.pop()
    assert step <= 5, f"diverged only at step {step}"
    # Nothing was committed at or after the diverged step, and the message names the newest checkpoint there is.
    committed = [ref.step for ref in CheckpointStore(checkpoints, 100, ("tower0", "tower1")).committed()]
    assert all(s < step for s in committed), (committed, step)
    newest = f"step-{max(committed):09d} (step {max(committed)})" if committed else "none yet"
    assert newest in results[0][2], results[0][2][-3000:]
    return step


def test_demo_config_at_learning_rate_100_exits_4_with_the_message(tmp_path):
    results = diverging_run(tmp_path, 2)
    check_diverged(results, tmp_path / "runs" / "demo" / "checkpoints")
    assert "final:" not in results[0][2]
    assert not read_history(tmp_path / "runs" / "demo")  # no epoch finished, none recorded


def test_two_pairs_stop_together_without_waiting_for_the_timeout(tmp_path):
    # Generated data: the pairs read different shards, so their losses differ. A rank left waiting in a
    # collective would give up after the 20 s group timeout with exit code 3, not 4.
    small = ["--set", "data.source=generated", "--set", "data.generated_train_images=256", "--set", "data.generated_val_images=32",
             "--set", "train.batch_size=16", "--set", f"train.run_dir={tmp_path / 'run'}", "--set", "dist.timeout_seconds=20"]
    results = diverging_run(tmp_path, 4, *small)
    check_diverged(results, tmp_path / "run" / "checkpoints")


def test_a_run_that_does_not_learn_says_so_in_its_final_line_and_history(tmp_path):
    run_dir = tmp_path / "run"
    port = free_port()
    argv = [sys.executable, "-m", "alexserve.worker", "--set", "data.source=generated", "--set", "data.generated_train_images=128",
            "--set", "data.generated_val_images=64", "--set", "train.batch_size=32", "--set", "train.num_epochs=1",
            "--set", "optim.learning_rate=1e-9", "--set", f"train.run_dir={run_dir}"]  # a rate that cannot learn anything
    procs = [subprocess.Popen(argv, env=rank_env(r, 2, port), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in range(2)]
    (code, _, err), _ = wait_all(procs, 240)
    assert code == 0, err[-3000:]
    final = [line for line in err.splitlines() if line.startswith("final:")]
    assert len(final) == 1 and "is at chance level for 10 classes" in final[0] and "did not learn" in final[0], err[-3000:]
    (record,) = read_history(run_dir)
    assert record.near_chance is True and record.val_top1_error > 0.8


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
    sup._drain_reports = lambda: None  # no sockets in this test: reports are handed over directly
    job = JobRecord(id="job-1", spec={}, run_dir=str(tmp_path / "run"), max_restarts=2, state=JobState.RUNNING)
    sup.jobs[job.id], sup.runtime[job.id] = job, JobRuntime(proc=_Exited())
    message = "[alexserve rank 0] training diverged at step 2, learning rate 6.25: the loss is nan. ..."
    for rank in (0, 1):  # every rank reports; the job counts once
        sup.handle_report(ErrorEvent(job_id=job.id, rank=rank, message=message, reason=reason))
    sup._on_exit(job, sup.runtime[job.id], 1)
    divergences = sup.metrics.registry.get_sample_value("alexserve_train_divergences_total")
    if reason == "diverged":
        assert job.state == JobState.FAILED and job.reason == message
        assert job.restarts == job.restarts_total == 0 and job.id not in sup.runtime
        assert divergences == 1 and sup.metrics.registry.get_sample_value("alexserve_worker_restarts_total") == 0
    else:  # any other failure keeps its restart budget
        assert job.state == JobState.RUNNING and job.restarts == 1 and divergences == 0


@pytest.mark.skipif(USE_FAKE_WORKER, reason="needs the real worker")
@pytest.mark.timeout(180)
def test_supervised_job_that_diverges_fails_with_the_reason_and_no_restart(supervisor):  # noqa: F811 (fixture)
    def metric(name: str, labels: dict | None = None) -> float:
        with urllib.request.urlopen(supervisor.metrics_url, timeout=5) as r:
            families = text_string_to_metric_families(r.read().decode())
        return next(s.value for f in families for s in f.samples if s.name == name and (labels is None or s.labels == labels))

    spec = tiny_spec(40, name="diverges", max_restarts=2)
    spec["config"]["optim"]["learning_rate"] = 100
    job = supervisor.client.submit(spec, "diverges.json")
    assert metric("alexserve_train_divergences_total") == 0  # exists before the first divergence
    done = supervisor.client.wait_for(job["id"], {"completed", "failed"}, 120)
    log = supervisor.job_log(job["id"])
    assert done["state"] == "failed", f"{done['reason']}\n{log}"
    assert DIVERGED.search(done["reason"]), f"{done['reason']}\n{log}"
    assert done["restarts_total"] == 0 and done["attempts"] == 1, done
    assert metric("alexserve_train_divergences_total") == 1
    assert metric("alexserve_worker_restarts_total") == 0
    assert metric("alexserve_jobs", {"state": "failed"}) == 1
