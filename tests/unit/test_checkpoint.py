"""Checkpoints are complete or invisible, never run code, and say which file is wrong and why (in-process).

Killed writers, in forked and real processes, are in tests/integration/test_checkpoint_killed_writers.py.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from alexserve.checkpoint import store as ckpt
from alexserve.checkpoint.rng_state import capture_rng_state, restore_rng_state
from alexserve.checkpoint.store import (
    CheckpointError,
    CheckpointRef,
    CheckpointStore,
    check_loadable,
)
from alexserve.config import ModelConfig
from helpers.checkpoints import (
    TOWERS,
    assert_is_step,
    job_config,
    latest,
    shared_payload,
    tower_payload,
    write_checkpoint,
)


def _rewrite_manifest_entry(ref: CheckpointRef, name: str) -> None:
    """Makes the manifest agree with a file the test tampered with, to reach the checks behind the digest."""
    import hashlib

    data = (ref.path / f"{name}.pt").read_bytes()
    manifest = json.loads((ref.path / ckpt.MARKER).read_text())
    manifest["shards"][name].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (ref.path / ckpt.MARKER).write_text(json.dumps(manifest))


# ---------------------------------------------------------------- round trip, visibility, pruning


def test_round_trip_layout_and_contents(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt", keep_last=3)
    assert store.latest() is None
    ref = write_checkpoint(store, 12)
    assert ref.path == tmp_path / "ckpt" / "step-000000012"
    assert sorted(p.name for p in ref.path.iterdir()) == sorted(
        ["COMMITTED", "config.json", "shared.pt", "tower0.pt", "tower0.json", "tower1.pt", "tower1.json"]
    )
    assert_is_step(store, latest(store), 12)
    store.verify(ref)
    assert json.loads((ref.path / "config.json").read_text())["model"]["width"] == 0.25  # readable by a human


def test_uncommitted_shards_are_invisible_and_cleaned_by_the_next_commit(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=5)
    write_checkpoint(store, 1)
    store.write_shard(2, "tower0", tower_payload(2, 0))
    store.write_shard(2, "tower1", tower_payload(2, 1))  # every shard, but no commit
    assert latest(store).step == 1
    write_checkpoint(store, 3)
    assert [r.step for r in store.committed()] == [1, 3]
    assert list((tmp_path / ckpt.STAGING).iterdir()) == []


def test_commit_names_a_missing_shard(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    store.write_shard(5, "tower0", tower_payload(5, 0))
    with pytest.raises(CheckpointError, match=r"shard 'tower1' is missing"):
        store.commit(5, shared_payload(5), job_config())
    assert store.latest() is None


def test_keep_last_prunes_only_old_committed_checkpoints(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    for step in (10, 20, 30, 40):
        write_checkpoint(store, step)
    store.write_shard(50, "tower0", tower_payload(50, 0))  # a later step being written: must survive pruning
    assert [r.step for r in store.committed()] == [30, 40]
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.STAGING, ckpt.TRASH, "step-000000030", "step-000000040"]
    assert list((tmp_path / ckpt.TRASH).iterdir()) == []
    assert [p.name for p in (tmp_path / ckpt.STAGING).iterdir()] == ["step-000000050"]
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointStore(tmp_path, keep_last=0)


def test_recommitting_a_step_replaces_it_whole(tmp_path):
    # A run resumed from an older checkpoint reaches the same step again.
    store = CheckpointStore(tmp_path, keep_last=3)
    write_checkpoint(store, 4)
    store.write_shard(4, "tower0", {"mark": torch.tensor(1)})
    store.write_shard(4, "tower1", {"mark": torch.tensor(2)})
    store.commit(4, {"mark": torch.tensor(3)}, job_config())
    ref = latest(store)
    assert [store.load(ref, n)["mark"].item() for n in (*TOWERS, "shared")] == [1, 2, 3]


def test_committing_an_earlier_step_drops_the_abandoned_later_ones(tmp_path):
    # Resumed from step 20 because step 30 was damaged: step 30 must not be the next resume's pick,
    # and the new step 25 must survive pruning even though 30 had the higher number.
    for step in (10, 20, 30):
        write_checkpoint(CheckpointStore(tmp_path, keep_last=3), step)
    store = CheckpointStore(tmp_path, keep_last=1)
    write_checkpoint(store, 25)
    assert [r.step for r in store.committed()] == [25]
    assert_is_step(store, latest(store), 25)


def test_folders_without_a_manifest_are_ignored(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    write_checkpoint(store, 1)
    (tmp_path / "step-000000009").mkdir()  # e.g. copied by hand, half done
    assert latest(store).step == 1


# ---------------------------------------------------------------- what may be saved and loaded


class _RunsCode:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_write_refuses_what_weights_only_loading_could_not_read(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    with pytest.raises(CheckpointError, match=r"shard 'tower0'\['rng'\]\['numpy'\] is a numpy.ndarray"):
        store.write_shard(1, "tower0", {"rng": {"numpy": np.zeros(3)}})
    with pytest.raises(CheckpointError, match=r"_RunsCode"):
        store.write_shard(1, "tower0", {"x": _RunsCode(tmp_path / "never")})
    with pytest.raises(CheckpointError, match=r"shard 'tower7' is not one of"):
        store.write_shard(1, "tower7", {})
    with pytest.raises(CheckpointError, match=r"shared\['loss'\] is a numpy.float64"):
        store.write_shard(1, "tower0", {})
        store.write_shard(1, "tower1", {})
        store.commit(1, {"loss": np.float64(1.0)}, job_config())


def test_every_type_the_write_check_accepts_loads_with_weights_only():
    # check_loadable's allow-list claims these survive torch.load(weights_only=True); hold it to that.
    from collections import OrderedDict

    payload = {
        "tensor": torch.arange(3),
        "param": torch.nn.Parameter(torch.ones(2)),
        "scalars": [True, 3, 2.5, 1 + 2j, "s", b"b", None, 2**80, float("inf")],
        "torch_meta": (torch.float16, torch.device("cpu"), torch.Size([2, 3])),
        "ordered": OrderedDict(a=1),
        "set": {1, 2},
        7: {"int keys": 1},
    }
    check_loadable(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert loaded["scalars"] == payload["scalars"] and loaded[7] == {"int keys": 1}


@pytest.mark.parametrize("form", ["torch zip", "plain pickle"])
def test_a_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path, form):
    store = CheckpointStore(tmp_path / "ckpt", keep_last=2)
    ref = write_checkpoint(store, 1)
    marker = tmp_path / "code-ran"
    evil = {"format_version": 1, "step": 1, "payload": {"weights": _RunsCode(marker)}}
    with open(ref.path / "tower0.pt", "wb") as f:
        if form == "torch zip":
            torch.save(evil, f)
        else:
            pickle.dump(evil, f, protocol=2)  # the protocol torch.save itself uses
    _rewrite_manifest_entry(ref, "tower0")  # the digest is no defence: an attacker can rewrite it too
    with pytest.raises(CheckpointError, match=r"tower0\.pt: refused.*posix\.system.*must never run code"):
        store.load(latest(store), "tower0")
    assert not marker.exists()


def test_truncated_shard_names_the_file_and_sizes(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    ref = write_checkpoint(store, 1)
    shard = ref.path / "tower1.pt"
    size = shard.stat().st_size
    os.truncate(shard, size // 2)
    expected = rf"tower1\.pt: truncated or altered: {size // 2} bytes, the manifest recorded {size}"
    with pytest.raises(CheckpointError, match=expected):
        store.load(ref, "tower1")
    with pytest.raises(CheckpointError, match=r"tower1\.pt: truncated"):
        store.verify(ref)
    # Even when the manifest is made to agree, the torch reader's failure is named.
    _rewrite_manifest_entry(ref, "tower1")
    with pytest.raises(CheckpointError, match=r"tower1\.pt: not a readable torch file"):
        store.load(latest(store), "tower1")


def test_flipped_byte_and_missing_files_are_named(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    ref = write_checkpoint(store, 1)
    shard = ref.path / "tower0.pt"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"tower0\.pt: corrupt: SHA-256"):
        store.load(ref, "tower0")
    (ref.path / "shared.pt").unlink()
    with pytest.raises(CheckpointError, match=r"shared\.pt: missing"):
        store.load_shared(ref)
    with pytest.raises(CheckpointError, match=r"shard 'tower2' is missing; the manifest lists \['tower0', 'tower1'\]"):
        store.load(ref, "tower2")


def test_model_config_mismatch_names_each_field(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    ref = write_checkpoint(store, 1)
    same = ModelConfig(num_classes=10, width=0.25, input_size=64).model_dump(mode="json")
    store.check_model_config(ref, same)  # tuples vs JSON lists must not count as a difference
    other = ModelConfig(num_classes=20, width=0.5, input_size=64).model_dump(mode="json")
    with pytest.raises(CheckpointError) as err:
        store.check_model_config(ref, other)
    message = str(err.value)
    assert "config.json" in message
    assert "model.width is 0.25 in the checkpoint but 0.5" in message
    assert "model.num_classes is 10 in the checkpoint but 20" in message
    assert "input_size" not in message
    store.check_model_config(ref, other, fields=["input_size"])  # only the fields asked about


# ---------------------------------------------------------------- RNG states


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.standard_normal()  # and one in numpy's (odd count)
    store = CheckpointStore(tmp_path, keep_last=1, shard_names=("tower0",))
    store.write_shard(1, "tower0", {"rng": capture_rng_state()})
    store.commit(1, {}, job_config())

    def draw():
        python = [random.random() for _ in range(5)], random.gauss(0, 1)
        return torch.rand(5).tolist(), np.random.standard_normal(5).tolist(), *python

    expected = draw()
    draw()  # move every generator on
    restore_rng_state(store.load(latest(store), "tower0")["rng"])
    assert draw() == expected


# ---------------------------------------------------------------- identity and strict numbers (issue 13)


def test_the_manifest_records_the_job_and_a_job_accepts_only_its_own(tmp_path):
    hand = CheckpointStore(tmp_path / "hand", keep_last=3)
    assert write_checkpoint(hand, 2).manifest[ckpt.JOB_ID_KEY] is None
    job1 = CheckpointStore(tmp_path / "ckpt", keep_last=3, job_id="job-1")
    ref = write_checkpoint(job1, 4)
    assert json.loads((ref.path / ckpt.MARKER).read_text())[ckpt.JOB_ID_KEY] == "job-1"
    assert job1.identity_problem(ref) is None
    assert CheckpointStore(tmp_path / "ckpt", keep_last=3).identity_problem(ref) is None  # a hand run takes any
    problem = CheckpointStore(tmp_path / "ckpt", keep_last=3, job_id="job-2").identity_problem(ref)
    assert problem == (
        f"{ref.path}: the checkpoint was written by job 'job-1', not by this job 'job-2'; "
        "a job resumes only from its own checkpoints: give this job a folder of its own"
    )
    old = CheckpointStore(tmp_path / "hand", keep_last=3, job_id="job-1").identity_problem(latest(hand))
    assert "records no job identity" in old


def test_a_job_never_prunes_another_jobs_checkpoints(tmp_path):
    job1 = CheckpointStore(tmp_path / "ckpt", keep_last=3, job_id="job-1")
    for step in (1, 2, 9):
        write_checkpoint(job1, step)
    before = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    # keep_last 1, and steps 9 > 3 look abandoned: the old store trashed all three of job-1's.
    job2 = CheckpointStore(tmp_path / "ckpt", keep_last=1, job_id="job-2")
    write_checkpoint(job2, 3)
    write_checkpoint(job2, 5)
    after = sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.startswith("step-"))
    assert after == sorted([*(n for n in before if n.startswith("step-")), "step-000000005"])


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_in_checkpoint_json_are_refused(tmp_path, constant):
    store = CheckpointStore(tmp_path / "ckpt", keep_last=3)
    ref = write_checkpoint(store, 4)
    manifest = (ref.path / ckpt.MARKER).read_text()
    (ref.path / ckpt.MARKER).write_text(manifest.replace('"created_unix": ', f'"created_unix": {constant}, "x": '))
    with pytest.warns(UserWarning, match=f"COMMITTED: ignoring checkpoint .*non-finite number {constant}"):
        assert store.latest() is None
    (ref.path / ckpt.MARKER).write_text(manifest)
    config = (ref.path / "config.json").read_text().replace('"learning_rate": 0.01', f'"learning_rate": {constant}')
    (ref.path / "config.json").write_text(config)
    data = (ref.path / "config.json").read_bytes()
    import hashlib

    fixed = json.loads(manifest)
    fixed["config"].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (ref.path / ckpt.MARKER).write_text(json.dumps(fixed))
    with pytest.raises(CheckpointError, match=f"config.json: not valid JSON: non-finite number {constant}"):
        store.load_config(latest(store))


def test_a_non_finite_value_is_never_written_into_checkpoint_json(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt", keep_last=3)
    for tower, name in enumerate(store.shard_names):
        store.write_shard(4, name, tower_payload(4, tower))
    with pytest.raises(CheckpointError, match="config.json: refusing to write a value that is not finite"):
        store.commit(4, shared_payload(4), {"optim": {"learning_rate": float("nan")}})


def test_a_resume_names_fields_newer_than_the_checkpoint_and_what_they_do():
    """A run saved before a field existed resumes under the field's default; the notice says so, not '<absent>'."""
    from alexserve.checkpoint.run_checkpointer import RunCheckpointer
    from alexserve.config import JobConfig
    from alexserve.train.schedule import PlateauSchedule

    job = JobConfig(model=ModelConfig(num_classes=10, width=0.25, input_size=64, pixel_std=50.0))
    saved = job.model_dump(mode="json")
    del saved["optim"]["reductions_within_budget"]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=job.optim.learning_rate)
    checkpointer = RunCheckpointer(job, topology=None, store=None)
    notices = checkpointer._apply_changes(saved, optimizer, PlateauSchedule(job.optim, job.lr_epoch_budget))
    assert notices == [
        "optim.reductions_within_budget: not in the checkpoint (written before alexserve had this field), None now "
        "(None means auto: below paper size the rate also drops when no more epochs are left than reductions are due)"
    ]
