"""A supervised job resumes only its own checkpoints and history; a changed field is applied with a notice.

Issue 13, item 1: a second job pointed at a first job's folders took over its weights, emptied its history.jsonl
and deleted its checkpoints when pruning; a learning rate changed in a resumed job's spec was silently ignored.
The identity is ALEXSERVE_JOB_ID, which the supervisor sets for the workers it launches; a worker run by hand has
none and keeps its freedom.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from alexserve.checkpoint.run_checkpointer import SHARD_NAMES
from alexserve.checkpoint.store import CheckpointStore
from alexserve.contract.names import ENV_JOB_ID
from helpers.processes import start_ranks, wait_all
from helpers.worker_jobs import CHECKPOINTED_JOB


def worker(run_dir: Path, *extra: str, job_id: str | None, timeout: float = 120) -> list[tuple[int, str, str]]:
    argv = ["-m", "alexserve.worker", *CHECKPOINTED_JOB, "--set", f"train.run_dir={run_dir}", *extra]
    env = {ENV_JOB_ID: job_id} if job_id is not None else {ENV_JOB_ID: ""}
    return wait_all(start_ranks(argv, 2, **env), timeout)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_ok(results: list[tuple[int, str, str]]) -> str:
    for code, _, err in results:
        assert code == 0, err[-3000:]
    return results[0][2]


@pytest.fixture(scope="module")
def job1(tmp_path_factory) -> Path:
    """Job 'job-1' stopped after 10 steps: one epoch (8 steps) in its history, its newest checkpoint at step 10."""
    run_dir = tmp_path_factory.mktemp("job1")
    assert_ok(worker(run_dir, "--set", "train.max_steps=10", job_id="job-1"))
    assert (run_dir / "history.jsonl").stat().st_size > 0
    return run_dir


def test_another_job_neither_resumes_nor_prunes_job1s_checkpoints(job1: Path, tmp_path: Path):
    run_dir = tmp_path / "shared"
    shutil.copytree(job1, run_dir)
    before = snapshot(run_dir)
    results = worker(run_dir, "--resume", "--set", "train.keep_last_checkpoints=1", job_id="job-2")
    assert results[0][0] == 2, results[0][2][-3000:]
    err = results[0][2]
    assert "written by job 'job-1', not by this job 'job-2'" in err, err[-3000:]
    assert str(run_dir / "checkpoints") in err
    assert snapshot(run_dir) == before  # weights, checkpoints and history byte-for-byte the same


def test_another_job_never_truncates_job1s_history(job1: Path, tmp_path: Path):
    run_dir = tmp_path / "shared"
    shutil.copytree(job1, run_dir)
    history = (run_dir / "history.jsonl").read_bytes()
    # Its own (empty) checkpoint folder, so nothing to resume: the old code emptied the history here.
    results = worker(
        run_dir,
        "--resume",
        "--set",
        f"train.checkpoint_dir={tmp_path / 'own-checkpoints'}",
        "--set",
        "dist.timeout_seconds=5",
        job_id="job-2",
    )
    assert results[0][0] == 2, results[0][2][-3000:]
    assert "history.jsonl:1: written by job 'job-1', not by this job 'job-2'" in results[0][2], results[0][2][-3000:]
    assert (run_dir / "history.jsonl").read_bytes() == history


def test_the_same_job_resumes_and_applies_a_changed_learning_rate_with_a_notice(job1: Path, tmp_path: Path):
    run_dir = tmp_path / "again"
    shutil.copytree(job1, run_dir)
    err = assert_ok(worker(run_dir, "--resume", "--set", "optim.learning_rate=0.001", job_id="job-1"))
    assert "resumed from the checkpoint at step 10" in err
    assert "optim.learning_rate: 0.002 in the checkpoint, 0.001 now; training continues at 0.001" in err, err[-3000:]
    store = CheckpointStore(run_dir / "checkpoints", keep_last=3, shard_names=SHARD_NAMES)
    final = store.latest()
    assert final is not None and final.step == 16 and final.manifest["job_id"] == "job-1"
    assert store.load_shared(final)["schedule"]["lr"] == pytest.approx(0.001)
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all('"job_id": "job-1"' in line for line in lines)
    assert '"lr": 0.001' in lines[1]


def test_a_hand_run_keeps_its_freedom_and_a_job_refuses_what_it_wrote(job1: Path, tmp_path: Path):
    run_dir = tmp_path / "by-hand"
    shutil.copytree(job1, run_dir)
    err = assert_ok(worker(run_dir, "--resume", job_id=None))  # no identity: resumes job-1's folder, as before
    assert "resumed from the checkpoint at step 10" in err
    # Its checkpoints record no identity, and job-1 refuses them (as it would checkpoints from before identities).
    results = worker(run_dir, "--resume", job_id="job-1")
    assert results[0][0] == 2, results[0][2][-3000:]
    assert "records no job identity" in results[0][2], results[0][2][-3000:]
