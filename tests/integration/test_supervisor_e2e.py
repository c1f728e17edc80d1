"""The supervisor with the real worker under real torchrun: the issue's acceptance scenarios.

Each test starts `python -m alexserve.supervisor` on free ports with its own
state dir, drives it with the client, and checks job states, reports, files and
/metrics. Teardown stops the supervisor and asserts no worker outlived it.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from alexserve.checkpoint.naming import newest_committed_step
from alexserve.supervisor.process import marked_processes
from helpers.supervisor import (  # noqa: F401 (fixture)
    cleanup,
    start_supervisor,
    supervisor,
    tiny_spec,
    wait_until,
    worker_pids,
)

pytestmark = pytest.mark.timeout(180)
BATCH = 8


def metric(sup, name: str, labels: dict | None = None) -> float:
    with urllib.request.urlopen(sup.metrics_url, timeout=5) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and (labels is None or s.labels == labels):
                return s.value
    raise KeyError(name)


def wait_state(sup, job_id: str, states: set[str], timeout: float) -> dict:
    try:
        return sup.client.wait_for(job_id, states, timeout)
    except TimeoutError as err:
        pytest.fail(f"{err}\n--- worker log ---\n{sup.job_log(job_id)}\n--- supervisor log ---\n{sup.log()[-3000:]}")


def wait_step(sup, job_id: str, step: int, timeout: float = 60) -> dict:
    def reached():
        status = sup.client.status(job_id)
        assert status["state"] in ("queued", "running", "paused"), (
            f"{status['state']}: {status['reason']}\n{sup.job_log(job_id)}"
        )
        return status if status["step"] >= step else None

    return wait_until(reached, timeout, f"{job_id} to reach step {step}")


def test_submit_pause_resume_complete(supervisor):  # noqa: F811 (fixture)
    steps = 120
    job = supervisor.client.submit(tiny_spec(steps), "tiny.json")
    assert job["state"] in ("queued", "running")
    wait_state(supervisor, job["id"], {"running"}, 30)
    wait_step(supervisor, job["id"], 3)
    supervisor.client.call("pause", job_id=job["id"])
    paused = wait_state(supervisor, job["id"], {"paused"}, 60)
    # Both ranks' last reports name the step they paused at, and nothing moves while paused.
    time.sleep(1.0)
    first = supervisor.client.status(job["id"])
    ranks = first["ranks"]
    assert set(ranks) == {"0", "1"}, ranks
    assert ranks["0"]["step"] == ranks["1"]["step"] == first["step"], ranks
    assert paused["reason"] == f"paused at step {first['step']}"
    time.sleep(1.5)
    second = supervisor.client.status(job["id"])
    assert second["state"] == "paused" and second["ranks"] == ranks and second["step"] == first["step"]
    assert first["step"] < steps

    supervisor.client.call("resume", job_id=job["id"])
    done = wait_state(supervisor, job["id"], {"completed", "failed"}, 120)
    assert done["state"] == "completed", done["reason"] + "\n" + supervisor.job_log(job["id"])
    assert done["step"] == steps and done["exit_code"] == 0 and done["restarts_total"] == 0
    assert metric(supervisor, "alexserve_train_images_total") == steps * BATCH
    assert metric(supervisor, "alexserve_train_steps_total") == steps
    assert metric(supervisor, "alexserve_jobs", {"state": "completed"}) == 1
    assert metric(supervisor, "alexserve_train_step_duration_seconds_count", {"rank": "1"}) == steps
    assert (
        metric(supervisor, "alexserve_exchange_bytes_total", {"rank": "0", "point": "conv3", "direction": "forward"})
        > 0
    )
    logs = supervisor.client.call("logs", job_id=job["id"], lines=5)
    assert logs["text"].count("\n") <= 5 and logs["text"]


def test_stop_writes_a_checkpoint_then_resume_and_cancel(supervisor):  # noqa: F811 (fixture)
    job = supervisor.client.submit(tiny_spec(100_000, name="long"), "long.json")
    wait_step(supervisor, job["id"], 5)
    supervisor.client.call("stop", job_id=job["id"])
    stopped = wait_state(supervisor, job["id"], {"stopped", "failed", "completed"}, 60)
    assert stopped["state"] == "stopped", stopped["reason"] + "\n" + supervisor.job_log(job["id"])
    assert stopped["exit_code"] == 0
    checkpoints = Path(stopped["checkpoint_dir"])
    assert newest_committed_step(checkpoints) == stopped["step"] == stopped["last_checkpoint_step"] >= 5
    assert (checkpoints / f"step-{stopped['step']:09d}" / "COMMITTED").is_file()
    assert metric(supervisor, "alexserve_last_checkpoint_timestamp_seconds") > time.time() - 120

    # resume relaunches from that checkpoint; cancel kills the group at once.
    supervisor.client.call("resume", job_id=job["id"])
    wait_state(supervisor, job["id"], {"running"}, 30)
    resumed = wait_step(supervisor, job["id"], stopped["step"] + 2)
    assert resumed["attempts"] == 2
    cancelled = supervisor.client.call("cancel", job_id=job["id"])
    assert cancelled["state"] == "cancelled"
    wait_until(lambda: not marked_processes(supervisor.state_dir), 15, "the cancelled job's processes to go")


def test_sigkill_of_one_worker_restarts_from_the_checkpoint(supervisor):  # noqa: F811 (fixture)
    steps = 100
    job = supervisor.client.submit(tiny_spec(steps, name="crashy", max_restarts=2), "crashy.json")
    wait_step(supervisor, job["id"], 5)
    supervisor.client.call("checkpoint_now", job_id=job["id"])
    status = wait_until(
        lambda: (s := supervisor.client.status(job["id"]))["last_checkpoint_step"] is not None and s,
        60,
        "the requested checkpoint",
    )
    checkpoint = status["last_checkpoint_step"]
    assert newest_committed_step(Path(status["checkpoint_dir"])) == checkpoint
    victims = wait_until(lambda: worker_pids(supervisor.state_dir, rank=1), 10, "rank 1's pid")
    before = supervisor.client.status(job["id"])["step"]
    assert before < steps - 20, "the job ran too fast for this test"
    os.kill(victims[0], signal.SIGKILL)

    restarted = wait_until(
        lambda: (s := supervisor.client.status(job["id"]))["restarts_total"] >= 1 and s, 60, "the restart"
    )
    assert (
        f"relaunching from checkpoint step {newest_committed_step(Path(status['checkpoint_dir']))}"
        in restarted["reason"]
    )
    assert "restart 1 of 2" in restarted["reason"]
    done = wait_state(supervisor, job["id"], {"completed", "failed"}, 150)
    assert done["state"] == "completed", done["reason"] + "\n" + supervisor.job_log(job["id"])
    assert done["restarts_total"] == 1 and done["attempts"] == 2 and done["step"] == steps
    assert metric(supervisor, "alexserve_worker_restarts_total") == 1
    # The relaunch started from the checkpoint, not from scratch: only the steps after the checkpoint were
    # trained twice (from scratch, all `before` steps would be; checkpoint >= 5 keeps the two cases apart).
    trained = metric(supervisor, "alexserve_train_steps_total")
    assert steps <= trained <= steps + (before - checkpoint) + 4, (trained, before, checkpoint)


def test_supervisor_restart_keeps_the_job_list_and_leaves_no_orphans(tmp_path):
    state = tmp_path / "state"
    first = start_supervisor(state)
    try:
        long = first.client.submit(tiny_spec(100_000, name="long"), "long.json")
        waiting = first.client.submit(tiny_spec(4, name="waiting"), "waiting.json")  # one slot: this one queues
        assert first.client.status(waiting["id"])["state"] == "queued"
        first.client.call("cancel", job_id=waiting["id"])
        wait_step(first, long["id"], 2)
        assert marked_processes(state)
        first.stop(signal.SIGKILL)  # a crash: no chance to clean up
        # torchrun dies with its parent (PR_SET_PDEATHSIG) and takes the workers with it.
        wait_until(lambda: not marked_processes(state), 45, "workers of the killed supervisor to exit")
    finally:
        first.stop(signal.SIGKILL)

    second = start_supervisor(state)
    try:
        jobs = {j["id"]: j for j in second.client.list()}
        assert jobs[waiting["id"]]["state"] == "cancelled"
        assert jobs[long["id"]]["state"] == "failed"
        assert jobs[long["id"]]["reason"].startswith("interrupted: the supervisor exited while the job was running")
        assert not marked_processes(state)
        # A new job gets a new id; a clean shutdown (SIGTERM) stops it with a checkpoint before exiting.
        after = second.client.submit(tiny_spec(100_000, name="after"), "after.json")
        assert after["id"] not in (waiting["id"], long["id"])
        wait_step(second, after["id"], 3)
        assert marked_processes(state)
        second.stop(signal.SIGTERM)
        assert second.proc.returncode == 0, second.log()
        assert "stopping 1 job(s) with a checkpoint" in second.log()
        assert not marked_processes(state), "workers outlived a clean shutdown"
    finally:
        cleanup(second)

    third = start_supervisor(state)
    try:
        jobs = {j["id"]: j for j in third.client.list()}
        assert [jobs[j]["state"] for j in (long["id"], waiting["id"], after["id"])] == [
            "failed",
            "cancelled",
            "stopped",
        ]
        stopped = third.client.status(after["id"])
        assert stopped["exit_code"] == 0 and stopped["step"] >= 3, stopped["reason"]
        assert newest_committed_step(Path(stopped["checkpoint_dir"])) == stopped["step"]
        # `alexserve job resume` continues it under the new supervisor, from that checkpoint.
        third.client.call("resume", job_id=after["id"])
        resumed = wait_step(third, after["id"], stopped["step"] + 2)
        assert resumed["attempts"] == 2
        third.client.call("cancel", job_id=after["id"])
    finally:
        left = cleanup(third)
    assert not left


def test_a_zero_grace_shutdown_kills_and_fails_the_job(tmp_path):
    sup = start_supervisor(tmp_path / "state", "--stop-grace-seconds", "0")
    try:
        job = sup.client.submit(tiny_spec(100_000, name="killed"), "killed.json")
        wait_state(sup, job["id"], {"running"}, 30)
        sup.stop(signal.SIGTERM)
        assert sup.proc.returncode == 0, sup.log()
    finally:
        cleanup(sup)
    again = start_supervisor(tmp_path / "state")
    try:
        record = again.client.status(job["id"])
        assert record["state"] == "failed"
        assert record["reason"].startswith("interrupted: the supervisor shut down while the job was running")
    finally:
        assert not cleanup(again)


def test_two_pairs_job_runs_four_workers_and_counts_both_pairs_images(supervisor):  # noqa: F811 (fixture)
    spec = tiny_spec(6, name="two-pairs")
    spec["num_pairs"] = 2
    job = supervisor.client.submit(spec, "two-pairs.json")
    done = wait_state(supervisor, job["id"], {"completed", "failed"}, 150)
    assert done["state"] == "completed", f"{done['reason']}\n{supervisor.job_log(job['id'])}"
    assert "--nproc_per_node=4" in supervisor.job_log(job["id"])
    per_pair_batch = spec["config"]["train"]["batch_size"]
    assert metric(supervisor, "alexserve_train_images_total") == 6 * 2 * per_pair_batch
