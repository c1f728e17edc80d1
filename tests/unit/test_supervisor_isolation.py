"""Issue 13, failure 1: jobs may not share folders nor write outside the supervisor's runs root.

In process: a supervisor that is never started (no sockets) and may run no job
(max_running=0), so submit records jobs without launching anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from alexserve.contract.names import ENV_CHANNEL_SECRET, ENV_JOB_ID, ENV_RUN_ID
from alexserve.supervisor import process
from alexserve.supervisor.job_paths import PathRefused, folder_below
from alexserve.supervisor.service import ServerOptions, Supervisor
from alexserve.supervisor.states import JobState

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def supervisor(tmp_path):
    sup = Supervisor(ServerOptions(state_dir=tmp_path / "state", max_running=0))
    sup.lifecycle.runs_root.mkdir(parents=True)
    yield sup
    sup.close()


def ask(sup: Supervisor, tree: dict) -> dict:
    return json.loads(sup.verbs.handle_request([json.dumps(tree).encode()]))


def submit(sup: Supervisor, **spec) -> dict:
    return ask(sup, {"verb": "submit", "spec": {"config": {}, **spec}})


def end(sup: Supervisor, job_id: str) -> None:
    sup.lifecycle.finish(sup.jobs[job_id], JobState.STOPPED, "stopped by the test")


def test_runs_root_defaults_below_the_state_dir(supervisor, tmp_path):
    assert supervisor.lifecycle.runs_root == (tmp_path / "state" / "runs").resolve()
    job = submit(supervisor)["result"]
    assert supervisor.jobs[job["id"]].run_dir == str(supervisor.lifecycle.runs_root / job["id"])


@pytest.mark.parametrize(
    "run_dir, why",
    [
        ("/etc", "absolute paths are refused"),
        ("/root/x", "absolute paths are refused"),
        ("../../", "'..' is refused"),
        ("a/../../b", "'..' is refused"),
        (".", "not the root itself"),
        ("~/x", "'~' is not expanded"),
        ("job-9", "default run dirs"),
    ],
)
def test_a_run_dir_outside_the_runs_root_is_refused(supervisor, run_dir, why):
    reply = submit(supervisor, run_dir=run_dir)
    assert not reply["ok"] and why in reply["error"], reply
    reply = submit(supervisor, config={"train": {"checkpoint_dir": run_dir}})
    assert not reply["ok"] and why in reply["error"], reply
    assert supervisor.jobs == {}


def test_a_symlink_out_of_the_runs_root_is_refused(supervisor, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (supervisor.lifecycle.runs_root / "escape").symlink_to(outside)
    reply = submit(supervisor, run_dir="escape/run")
    assert not reply["ok"] and "outside the runs root" in reply["error"], reply
    with pytest.raises(PathRefused, match="outside the runs root"):
        folder_below(supervisor.lifecycle.runs_root, "escape", "run_dir")


def test_a_folder_of_a_recorded_job_is_refused_naming_it(supervisor):
    root = supervisor.lifecycle.runs_root
    first = submit(supervisor, run_dir="shared")["result"]["id"]
    assert (root / "shared").is_dir()
    (root / "alias").symlink_to(root / "shared")
    for spec in (
        {"run_dir": "shared"},
        {"run_dir": "./shared"},
        {"run_dir": "shared/inner"},  # inside the first job's folder
        {"run_dir": "alias"},  # the same folder through a symlink
        {"config": {"train": {"run_dir": "shared"}}},
        {"run_dir": "elsewhere", "config": {"train": {"checkpoint_dir": "shared/checkpoints"}}},
    ):
        reply = submit(supervisor, **spec)
        assert not reply["ok"] and f"already used by {first}" in reply["error"], (spec, reply)
    reply = submit(supervisor, run_dir="sha")  # a prefix of the name is another folder
    assert reply["ok"], reply
    reply = submit(supervisor, run_dir="outer")
    assert reply["ok"]
    reply = submit(supervisor, run_dir=".")
    assert not reply["ok"]
    assert len(supervisor.jobs) == 3


def test_continues_takes_over_an_ended_job_and_its_run_id(supervisor):
    first = submit(supervisor, run_dir="run")["result"]["id"]
    reply = submit(supervisor, continues=first)
    assert not reply["ok"] and "stop it (or let it end) first" in reply["error"]
    end(supervisor, first)
    reply = submit(supervisor, continues="job-77")
    assert not reply["ok"] and "no job 'job-77'" in reply["error"]
    reply = submit(supervisor, continues=first, run_dir="other")
    assert not reply["ok"] and f"continues {first} uses its run dir" in reply["error"]
    second = submit(supervisor, continues=first, config={"optim": {"learning_rate": 0.001}})["result"]["id"]
    job = supervisor.jobs[second]
    run_id = supervisor.jobs[first].run_id
    assert run_id.startswith(f"{first}.") and len(run_id) == len(first) + 9
    assert job.run_dir == supervisor.jobs[first].run_dir and job.run_id == run_id and job.continues == first
    config = json.loads(supervisor.store.config_path(second).read_text())
    assert config["train"]["run_dir"] == job.run_dir and config["optim"]["learning_rate"] == 0.001
    # job-1 belongs to its continuation now: not resumed, not continued twice.
    reply = ask(supervisor, {"verb": "resume", "job_id": first})
    assert not reply["ok"] and f"continued by {second}" in reply["error"]
    reply = submit(supervisor, continues=first)
    assert not reply["ok"] and f"already continued by {second}" in reply["error"]
    # A chain keeps the first job's run id.
    end(supervisor, second)
    third = submit(supervisor, continues=second)["result"]["id"]
    assert supervisor.jobs[third].run_id == run_id


def test_workers_get_the_job_id_the_run_id_and_the_channel_secret(supervisor, monkeypatch):
    launched = []

    class FakeProc:
        pid = 12345

        def poll(self):
            return None

    def fake_launch(config_path, log_path, env, *args, **kwargs):
        launched.append(env)
        return FakeProc()

    monkeypatch.setattr(process, "launch_worker_group", fake_launch)
    first = submit(supervisor, run_dir="run")["result"]["id"]
    end(supervisor, first)
    second = submit(supervisor, continues=first)["result"]["id"]
    supervisor.options.max_running = 1
    supervisor.lifecycle.launch(supervisor.jobs[second])
    (env,) = launched
    assert env[ENV_JOB_ID] == second and env[ENV_RUN_ID] == supervisor.jobs[first].run_id
    assert len(env[ENV_CHANNEL_SECRET]) == 64 and env[ENV_CHANNEL_SECRET] == supervisor.lifecycle.secrets[second]
    supervisor.lifecycle.runtime.clear()


def test_a_folder_swapped_for_a_symlink_after_submit_is_not_launched(supervisor, tmp_path, monkeypatch):
    monkeypatch.setattr(process, "launch_worker_group", lambda *a, **k: pytest.fail("launched"))
    job_id = submit(supervisor, run_dir="run")["result"]["id"]
    run = supervisor.lifecycle.runs_root / "run"
    run.rmdir()
    os.symlink(tmp_path, run)
    supervisor.lifecycle.launch(supervisor.jobs[job_id])
    job = supervisor.jobs[job_id]
    assert job.state == JobState.FAILED and "refusing to launch" in job.reason


def test_the_worker_by_hand_keeps_its_freedom_of_paths():
    from alexserve.config import JobConfig

    config = JobConfig.model_validate({"train": {"run_dir": "/tmp/anywhere", "checkpoint_dir": "../x"}})
    assert config.train.run_dir == Path("/tmp/anywhere")


def test_the_state_dir_seen_through_the_runs_root_is_refused(tmp_path):
    """deploy/: the host's runs/supervisor-state is the container's /state, and /runs is the runs root."""
    state = tmp_path / "state"
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "supervisor-state").symlink_to(state, target_is_directory=True)  # a bind mount, as far as paths go
    sup = Supervisor(ServerOptions(state_dir=state, runs_root=runs, max_running=0))
    try:
        for run_dir in ("supervisor-state", "supervisor-state/jobs/x"):
            reply = submit(sup, run_dir=run_dir)
            assert not reply["ok"] and ("job records" in reply["error"] or "outside the runs root" in reply["error"])
        reply = submit(sup, run_dir="fine")
        assert reply["ok"], reply
    finally:
        sup.close()
