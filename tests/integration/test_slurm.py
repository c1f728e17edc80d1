"""deploy/slurm/alexserve.sbatch on a real Slurm cluster: Debian's slurm-wlm 22.05, one node on loopback, brought up
by the test itself (helpers/slurm_cluster.py) and stopped by PID at the end.

Issue 22, part 2. A tiny two-tower job (in-memory generated images, width 0.125, 64-pixel crops) goes through
`sbatch` as a user would submit it:
- it completes, one torchrun agent through srun and the launcher, checkpoints in its run folder;
- the same job, sent SIGUSR1 mid-training the way Slurm preempts (`scancel --signal=USR1 --batch`), checkpoints,
  exits PREEMPTED, requeues itself, resumes and completes, with final weights equal (torch.equal) to the run that
  never stopped;
- two agents on the one node with `--nnodes=2` (4 ranks, 2 pairs) run the multi-node path: c10d rendezvous on the
  job's first node, data parallel across the pairs.

Needs root (slurmd runs jobs as their user) and the packages; CI installs them (.ci/run), and there their absence
fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from alexserve.checkpoint.run_checkpointer import SHARD_NAMES
from alexserve.checkpoint.store import CheckpointStore
from helpers.processes import REPO, TESTS, free_port
from helpers.slurm_cluster import ENDED_STATES, SlurmCluster, SlurmClusterError, missing_tools, one_node_cluster, tail

SBATCH_SCRIPT = REPO / "deploy" / "slurm" / "alexserve.sbatch"
# 1024 images / 32 = 32 steps an epoch, 2 epochs: long enough (a few seconds) that a signal sent at step 4 lands
# mid-training, short enough for CI's two cores. A progress line every step, so the test sees where training is.
TINY_JOB = [
    f"--set={field}"
    for field in (
        "data.source=generated",
        "data.generated_train_images=1024",
        "data.generated_val_images=64",
        "data.scale_size=73",
        "model.width=0.125",
        "model.input_size=64",
        "model.init_scheme=he",
        "optim.learning_rate=0.002",
        "train.batch_size=32",
        "train.num_epochs=2",
        "train.log_every_steps=1",
    )
]
FINAL_STEP = 64
JOB_TIMEOUT_SECONDS = 240  # one run of the tiny job is ~15 s alone on two cores; a requeued one is two plus ~10 s


def require_slurm() -> None:
    """Fails under CI (which installs Slurm and runs as root); skips elsewhere only without root or apt."""
    missing = missing_tools()
    problem = None
    if missing:
        problem = f"Slurm or MUNGE is not installed ({', '.join(missing)} missing: apt-get install slurm-wlm munge)"
    elif os.geteuid() != 0:
        problem = "the one-node Slurm cluster needs root (slurmd runs jobs as their user)"
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{problem}; CI must provide it (.ci/run)")
    if os.geteuid() == 0 and shutil.which("apt-get"):
        pytest.fail(f"{problem}; this host has root and apt-get, so install them")
    pytest.skip(problem)


@pytest.fixture(scope="module")
def cluster():
    require_slurm()
    with one_node_cluster() as running:
        print(f"one-node Slurm cluster up in {running.bring_up_seconds:.1f}s ({running.root})")
        yield running


@dataclass
class Submitted:
    job: int
    output: Path  # the job's stdout and stderr, appended to by each start
    run_dir: Path

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""


def submit(cluster: SlurmCluster, folder: Path, *options: str, nproc_per_node: int = 2) -> Submitted:
    """The tiny job through the deployment's sbatch script, as a user submits it (its environment passed on)."""
    folder.mkdir(parents=True, exist_ok=True)
    run_dir, output = folder / "run", folder / "job.out"
    env = {
        "ALEXSERVE_RDZV_PORT": str(free_port()),  # another test run on this host may hold the default
        "ALEXSERVE_NPROC_PER_NODE": str(nproc_per_node),
        "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    args = [*TINY_JOB, f"--set=train.run_dir={run_dir}"]
    job = cluster.submit(SBATCH_SCRIPT, *args, options=(f"--output={output}", *options), cwd=folder, env=env)
    return Submitted(job, output, run_dir)


def failure(cluster: SlurmCluster, run: Submitted, why: str) -> str:
    return f"{why}\n--- job {run.job} output {run.output}:\n{tail(run.output, 80)}\n{cluster.logs()}"


def wait_until_done(cluster: SlurmCluster, run: Submitted, timeout: float = JOB_TIMEOUT_SECONDS) -> dict[str, str]:
    try:
        return cluster.wait_for_job(run.job, timeout)
    except SlurmClusterError as err:
        pytest.fail(failure(cluster, run, str(err)))


def assert_completed(cluster: SlurmCluster, run: Submitted, info: dict[str, str]) -> None:
    state, code = info.get("JobState"), info.get("ExitCode")
    assert (state, code) == ("COMPLETED", "0:0"), failure(cluster, run, f"job {run.job} ended {state} {code}")


def final_checkpoint(run_dir: Path) -> tuple[int, dict[str, dict[str, torch.Tensor]], dict]:
    """(step, {tower: model state}, shared payload) of the run's newest committed checkpoint."""
    store = CheckpointStore(run_dir / "checkpoints", keep_last=3, shard_names=SHARD_NAMES)
    ref = store.latest()
    assert ref is not None, f"no committed checkpoint in {run_dir / 'checkpoints'}"
    return ref.step, {name: store.load(ref, name)["model"] for name in SHARD_NAMES}, store.load_shared(ref)


@pytest.fixture(scope="module")
def uninterrupted(cluster: SlurmCluster, tmp_path_factory) -> Submitted:
    run = submit(cluster, tmp_path_factory.mktemp("uninterrupted"))
    assert_completed(cluster, run, wait_until_done(cluster, run))
    return run


def test_the_job_completes_through_sbatch(cluster: SlurmCluster, uninterrupted: Submitted):
    text = uninterrupted.text()
    assert "1 agents x 2 workers, rendezvous localhost:" in text, failure(cluster, uninterrupted, "no start line")
    assert "final: val center" in text, failure(cluster, uninterrupted, "training did not finish")
    step, _, shared = final_checkpoint(uninterrupted.run_dir)
    assert step == FINAL_STEP and shared["num_pairs"] == 1


def test_a_preempted_job_checkpoints_requeues_resumes_and_ends_with_the_same_weights(
    cluster: SlurmCluster, uninterrupted: Submitted, tmp_path: Path
):
    from alexserve.contract.names import WorkerExit

    run = submit(cluster, tmp_path)
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    while "epoch 1/2 step 4/" not in run.text():  # mid-training: 60 steps still to go
        if time.monotonic() > deadline or cluster.job(run.job).get("JobState") in ENDED_STATES:
            pytest.fail(failure(cluster, run, f"job {run.job} ended or ran out of time before step 4 of epoch 1"))
        time.sleep(0.1)
    cluster.command("scancel", "--signal=USR1", "--batch", str(run.job))  # what --signal=B:USR1@GRACE sends
    info = wait_until_done(cluster, run)
    assert_completed(cluster, run, info)
    text = run.text()
    assert info.get("Restarts") == "1", failure(cluster, run, f"job {run.job} restarted {info.get('Restarts')} times")
    preempted = f"exited PREEMPTED ({int(WorkerExit.PREEMPTED)}): requeueing job {run.job}"
    assert preempted in text, failure(cluster, run, "the first start did not end PREEMPTED and requeue")
    resumed = [line for line in text.splitlines() if line.startswith("resumed from the checkpoint at step ")]
    assert len(resumed) == 1, failure(cluster, run, "the requeued start did not resume once")
    resumed_at = int(resumed[0].rsplit(" ", 1)[1])
    assert 4 <= resumed_at < FINAL_STEP, failure(cluster, run, f"resumed at step {resumed_at}: not mid-training")
    step, weights, _ = final_checkpoint(run.run_dir)
    reference_step, reference, _ = final_checkpoint(uninterrupted.run_dir)
    assert step == reference_step == FINAL_STEP
    for tower in SHARD_NAMES:
        for name, tensor in reference[tower].items():
            assert torch.equal(weights[tower][name], tensor), f"{tower} {name} differs from the uninterrupted run's"


def test_two_agents_rendezvous_as_two_nodes(cluster: SlurmCluster, tmp_path: Path):
    # Two srun tasks on the one node: each a torchrun agent of 2 workers, --nnodes=2, one c10d rendezvous.
    run = submit(cluster, tmp_path, "--ntasks-per-node=2", "--cpus-per-task=1")
    assert_completed(cluster, run, wait_until_done(cluster, run))
    assert "2 agents x 2 workers, rendezvous localhost:" in run.text(), failure(cluster, run, "no start line")
    step, _, shared = final_checkpoint(run.run_dir)
    assert shared["num_pairs"] == 2, f"the checkpoint says {shared['num_pairs']} pair(s), not 2"
    assert step == FINAL_STEP // 2  # each pair takes half of every epoch's batches


def test_an_odd_number_of_workers_per_node_is_refused(cluster: SlurmCluster, tmp_path: Path):
    run = submit(cluster, tmp_path, nproc_per_node=3)
    info = wait_until_done(cluster, run, timeout=60)
    assert info.get("ExitCode") == "2:0", failure(cluster, run, f"ended {info.get('JobState')} {info.get('ExitCode')}")
    assert "ALEXSERVE_NPROC_PER_NODE=3: must be an even number" in run.text()


def test_the_script_refuses_to_run_outside_slurm():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run(["bash", str(SBATCH_SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "not inside a Slurm job" in done.stderr, done.stderr
