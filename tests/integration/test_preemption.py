"""Preemption (issue 22): a scheduler's signal to one worker checkpoints both towers at one step, exits
PREEMPTED, and `--resume` ends bit-identical to a run that never stopped; the same through alexserve.launch;
a kill in the middle of the preemption checkpoint leaves the previous committed one the newest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_resume_export import assert_bit_identical, final_state, worker

from alexserve.checkpoint.run_checkpointer import SHARD_NAMES
from alexserve.checkpoint.store import CheckpointStore
from alexserve.contract.names import WorkerExit
from helpers.processes import REPO, TESTS, free_port, start_ranks, wait_all
from helpers.worker_jobs import CHECKPOINTED_JOB

PREEMPTED = int(WorkerExit.PREEMPTED)


def wait_for(path: Path, procs: list[subprocess.Popen], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), f"{path} never appeared"
        time.sleep(0.01)


def committed_steps(run_dir: Path) -> list[int]:
    store = CheckpointStore(run_dir / "checkpoints", keep_last=3, shard_names=SHARD_NAMES)
    return [ref.step for ref in store.committed()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    for code, _, err in worker(run_dir):
        assert code == 0, err[-3000:]
    return run_dir


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_to_one_worker_checkpoints_both_at_one_step_and_resume_is_bit_exact(uninterrupted, tmp_path, sig):
    procs = start_ranks(["-m", "alexserve.worker", *CHECKPOINTED_JOB, "--set", f"train.run_dir={tmp_path}"], 2)
    wait_for(tmp_path / "checkpoints" / "step-000000003", procs)
    procs[1].send_signal(sig)  # only the second tower is told: the flag must reach the first too
    results = wait_all(procs, 90)
    assert [code for code, _, _ in results] == [PREEMPTED, PREEMPTED], results[0][2][-3000:] + results[1][2][-2000:]
    line = next(x for x in results[0][2].splitlines() if x.startswith("preempted at step "))
    step = int(line.split()[3].rstrip(":"))
    assert 3 < step < 16 and "checkpoint committed in" in line, line
    assert committed_steps(tmp_path)[-1] == step  # both shards, one step, committed before anyone exited
    results = worker(tmp_path, "--resume")
    assert all(code == 0 for code, _, _ in results), results[0][2][-3000:]
    assert f"resumed from the checkpoint at step {step}" in results[0][2]
    assert_bit_identical(final_state(uninterrupted), final_state(tmp_path))


def test_a_kill_during_the_preemption_checkpoint_keeps_the_previous_one_newest(uninterrupted, tmp_path):
    procs = start_ranks(["-m", "alexserve.worker", *CHECKPOINTED_JOB, "--set", f"train.run_dir={tmp_path}"], 2)
    wait_for(tmp_path / "checkpoints" / "step-000000003", procs)
    before = committed_steps(tmp_path)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.send_signal(signal.SIGTERM)  # a second SIGTERM changes nothing
    # The grace period runs out: SIGKILL as soon as the preemption checkpoint's folder appears (mid-write).
    deadline = time.monotonic() + 60
    while not any(
        int(d.name.split("-")[1]) > before[-1] for d in (tmp_path / "checkpoints").glob("step-*") if d.is_dir()
    ):
        assert time.monotonic() < deadline, "no preemption checkpoint was started"
        if all(p.poll() is not None for p in procs):
            break
        time.sleep(0.001)
    for p in procs:
        p.kill()
        p.communicate()
    steps = committed_steps(tmp_path)
    assert steps and steps[-1] >= before[-1]  # the previous one, or the new one if it was committed in time
    results = worker(tmp_path, "--resume")
    assert all(code == 0 for code, _, _ in results), results[0][2][-3000:]
    assert_bit_identical(final_state(uninterrupted), final_state(tmp_path))


def launch(run_dir: Path, *extra: str, **environ: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", **environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")])
    argv = [
        *(
            "-m",
            "alexserve.launch",
            "--nproc-per-node=2",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{free_port()}",
        ),
        *("-m", "alexserve.worker", *CHECKPOINTED_JOB, "--set", f"train.run_dir={run_dir}", "--resume", *extra),
    ]
    return subprocess.Popen([sys.executable, *argv], env=env, stderr=subprocess.PIPE, text=True, cwd=REPO)


def test_the_launcher_forwards_sigterm_and_exits_preempted_then_resumes(uninterrupted, tmp_path):
    agent = launch(tmp_path)
    wait_for(tmp_path / "checkpoints" / "step-000000003", [agent])
    agent.send_signal(signal.SIGTERM)
    err = agent.communicate(timeout=90)[1]
    assert agent.returncode == PREEMPTED, err[-3000:]
    assert "preempted at step" in err
    again = launch(tmp_path)
    err = again.communicate(timeout=120)[1]
    assert again.returncode == 0, err[-3000:]
    assert_bit_identical(final_state(uninterrupted), final_state(tmp_path))


def test_the_launcher_exits_the_code_kubernetes_retries_when_asked(tmp_path):
    # deploy/kubernetes/: the Training Operator's restartPolicy ExitCode recreates pods only for codes >= 128.
    agent = launch(tmp_path, ALEXSERVE_PREEMPTED_EXIT_CODE="203")
    wait_for(tmp_path / "checkpoints" / "step-000000003", [agent])
    agent.send_signal(signal.SIGTERM)
    err = agent.communicate(timeout=90)[1]
    assert agent.returncode == 203, err[-3000:]
    assert "preempted at step" in err and "exiting 203 (ALEXSERVE_PREEMPTED_EXIT_CODE)" in err


def test_the_launcher_exits_with_the_workers_code_and_refuses_restarts(tmp_path):
    bad = launch(tmp_path, "--set", "train.batch_size=-1")
    err = bad.communicate(timeout=60)[1]
    assert bad.returncode == int(WorkerExit.BAD_INPUT), err[-2000:]
    done = subprocess.run(
        [sys.executable, "-m", "alexserve.launch", "--max-restarts=2", "-m", "alexserve.worker"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == int(WorkerExit.BAD_INPUT) and "--max-restarts=2" in done.stderr, done.stderr
