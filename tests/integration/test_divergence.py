"""Training that fails says so, end to end: ranks agree across pairs, the worker exits 4 with the message, the
supervisor fails the job without a restart, and a run at chance level says so.

The guard and the verdicts judged in-process are in tests/unit/test_divergence_detection.py.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from alexserve.checkpoint.store import CheckpointStore
from alexserve.contract.names import WorkerExit
from alexserve.parallel.topology import Topology
from alexserve.train.divergence import DivergenceMonitor, weights_finite
from alexserve.train.history import read_history
from helpers.processes import free_port, rank_env, rank_main, run_ranks, wait_all
from helpers.supervisor import USE_FAKE_WORKER, supervisor, tiny_spec  # noqa: F401 (fixture)

DIVERGED = re.compile(r"training diverged at step (\d+), learning rate [0-9.e+-]+")


# ------------------------------------------------------------------ agreement across pairs (4 gloo ranks)


def rank_pairs_disagree(topology: Topology, out: Path) -> None:
    """Pair 0 sees normal losses, pair 1 a runaway one at step 3 and a NaN at step 4; rank 3's weights go bad."""
    monitor = DivergenceMonitor(num_classes=10, factor=10.0, device=topology.device)
    verdicts = []
    for step, loss in enumerate([[2.0, 2.0, 2.0, 2.0], [2.0, 2.1, 500.0, math.nan]][topology.pair], start=1):
        monitor.observe(torch.tensor(loss), step)
        verdicts.append(monitor.verdict(topology))
    module = torch.nn.Linear(3, 2)
    finite_before = weights_finite(module, topology)
    if topology.rank == 3:
        with torch.no_grad():
            module.weight[0, 0] = math.inf
    finite_after = weights_finite(module, topology)
    torch.save(
        {"verdicts": verdicts, "finite_before": finite_before, "finite_after": finite_after},
        out / f"rank{topology.rank}.pt",
    )


def test_every_rank_judges_the_same_loss_and_weights_across_pairs(tmp_path):
    world_size = 4
    run_ranks(rank_pairs_disagree, tmp_path, world_size=world_size, timeout=120)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]
    for rank, result in enumerate(results):
        # Every rank, pair 0's included, learns of pair 1's runaway loss at step 3, and keeps naming step 3.
        assert result["verdicts"][:2] == [None, None], (rank, result)
        for step, problem in result["verdicts"][2:]:
            assert step == 3 and problem.startswith("the loss 500 is over 10 times its start"), (rank, result)
        assert result["finite_before"] is True and result["finite_after"] is False, (rank, result)


# ------------------------------------------------------------------ the worker: exit code 4, message, no checkpoint


def diverging_run(tmp_path: Path, world_size: int, *overrides: str, timeout: float = 240) -> list[tuple[int, str, str]]:
    """The demo config (its data made in tmp_path/runs/demo) in `world_size` worker processes at learning rate 100."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "alexserve.worker",
        "--set",
        "optim.learning_rate=100",
        "--set",
        "train.max_steps=20",
        "--set",
        "train.checkpoint_every_steps=1",
        *overrides,
    ]
    procs = [
        subprocess.Popen(
            argv,
            env=rank_env(r, world_size, port),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world_size)
    ]
    return wait_all(procs, timeout)


def check_diverged(results: list[tuple[int, str, str]], checkpoints: Path) -> int:
    """Asserts every rank stopped at the same early step with the message; returns that step."""
    steps = set()
    for rank, (code, _, err) in enumerate(results):
        assert code == WorkerExit.DIVERGED, f"rank {rank} exited {code}:\n{err[-3000:]}"
        match = DIVERGED.search(err)
        assert match, f"rank {rank}: no divergence message:\n{err[-3000:]}"
        steps.add(int(match.group(1)))
        assert "newest good checkpoint" in err and "Try: a lower learning rate" in err
        assert "optim.learning_rate=10 " in err
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
    small = [
        "--set",
        "data.source=generated",
        "--set",
        "data.generated_train_images=256",
        "--set",
        "data.generated_val_images=32",
        "--set",
        "train.batch_size=16",
        "--set",
        f"train.run_dir={tmp_path / 'run'}",
        "--set",
        "dist.timeout_seconds=20",
    ]
    results = diverging_run(tmp_path, 4, *small)
    check_diverged(results, tmp_path / "run" / "checkpoints")


def test_a_run_that_does_not_learn_says_so_in_its_final_line_and_history(tmp_path):
    run_dir = tmp_path / "run"
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "alexserve.worker",
        "--set",
        "data.source=generated",
        "--set",
        "data.generated_train_images=128",
        "--set",
        "data.generated_val_images=64",
        "--set",
        "train.batch_size=32",
        "--set",
        "train.num_epochs=1",
        "--set",
        "optim.learning_rate=1e-9",  # a rate that cannot learn anything
        "--set",
        f"train.run_dir={run_dir}",
    ]
    procs = [
        subprocess.Popen(
            argv, env=rank_env(r, 2, port), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for r in range(2)
    ]
    (code, _, err), _ = wait_all(procs, 240)
    assert code == 0, err[-3000:]
    final = [line for line in err.splitlines() if line.startswith("final:")]
    assert len(final) == 1, err[-3000:]
    assert "is at chance level for 10 classes" in final[0] and "did not learn" in final[0], err[-3000:]
    (record,) = read_history(run_dir)
    assert record.near_chance is True and record.val_top1_error > 0.8


# ------------------------------------------------------------------ the supervisor


@pytest.mark.skipif(USE_FAKE_WORKER, reason="needs the real worker")
@pytest.mark.timeout(180)
def test_supervised_job_that_diverges_fails_with_the_reason_and_no_restart(supervisor):  # noqa: F811 (fixture)
    def metric(name: str, labels: dict | None = None) -> float:
        with urllib.request.urlopen(supervisor.metrics_url, timeout=5) as r:
            families = text_string_to_metric_families(r.read().decode())
        return next(
            s.value for f in families for s in f.samples if s.name == name and (labels is None or s.labels == labels)
        )

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


if __name__ == "__main__":
    rank_main()
