"""Checkpoints are complete or invisible, never run code, and say which file is wrong and why."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import alexserve
from alexserve.config import JobConfig, ModelConfig
from alexserve.checkpoint import store as ckpt
from alexserve.checkpoint.store import (
    CheckpointError,
    CheckpointStore,
    capture_rng_state,
    check_loadable,
    restore_rng_state,
)

REPO_ROOT = Path(alexserve.__file__).resolve().parent.parent
TOWERS = ("tower0", "tower1")


def _tower_payload(step: int, tower: int, numel: int = 1000) -> dict:
    """A shard whose every value encodes (step, tower), so a mixed-up checkpoint cannot pass for a good one."""
    value = float(step * 10 + tower)
    return {
        "model": {"conv1.weight": torch.full((numel,), value), "conv1.bias": torch.full((4,), value)},
        "optim": {"state": {0: {"momentum_buffer": torch.full((numel,), -value)}}, "param_groups": [{"lr": 0.01, "params": [0]}]},
        "rng": capture_rng_state(),
    }


def _config() -> dict:
    return JobConfig(model=ModelConfig(num_classes=10, width=0.25, input_size=64)).model_dump(mode="json")


def _shared(step: int) -> dict:
    return {"schedule": {"lr": 0.01, "best_error": float("inf")}, "data": {"epoch": step // 4, "step_in_epoch": step % 4, "global_step": step}}


def _write_checkpoint(store: CheckpointStore, step: int, numel: int = 1000) -> ckpt.CheckpointRef:
    for tower, name in enumerate(store.shard_names):
        store.write_shard(step, name, _tower_payload(step, tower, numel))
    return store.commit(step, _shared(step), _config())


def _assert_is_step(store: CheckpointStore, ref: ckpt.CheckpointRef, step: int) -> None:
    """Every file of `ref` loads and belongs to `step`."""
    assert ref.step == step
    for tower, name in enumerate(TOWERS):
        payload = store.load(ref, name)
        assert torch.all(payload["model"]["conv1.weight"] == step * 10 + tower)
        assert torch.all(payload["optim"]["state"][0]["momentum_buffer"] == -(step * 10 + tower))
    assert store.load_shared(ref)["data"]["global_step"] == step
    assert store.load_config(ref) == _config()


def _rewrite_manifest_entry(ref: ckpt.CheckpointRef, name: str) -> None:
    """Makes the manifest agree with a file the test tampered with, to reach the checks behind the digest."""
    import hashlib

    data = (ref.path / f"{name}.pt").read_bytes()
    manifest = json.loads((ref.path / ckpt.MARKER).read_text())
    manifest["shards"][name].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (ref.path / ckpt.MARKER).write_text(json.dumps(manifest))


def _reopen(store: CheckpointStore) -> ckpt.CheckpointRef:
    ref = store.latest()
    assert ref is not None
    return ref


# ---------------------------------------------------------------- round trip, visibility, pruning


def test_round_trip_layout_and_contents(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt", keep_last=3)
    assert store.latest() is None
    ref = _write_checkpoint(store, 12)
    assert ref.path == tmp_path / "ckpt" / "step-000000012"
    assert sorted(p.name for p in ref.path.iterdir()) == sorted(
        ["COMMITTED", "config.json", "shared.pt", "tower0.pt", "tower0.json", "tower1.pt", "tower1.json"]
    )
    _assert_is_step(store, _reopen(store), 12)
    store.verify(ref)
    assert json.loads((ref.path / "config.json").read_text())["model"]["width"] == 0.25  # readable by a human


def test_uncommitted_shards_are_invisible_and_cleaned_by_the_next_commit(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=5)
    _write_checkpoint(store, 1)
    store.write_shard(2, "tower0", _tower_payload(2, 0))
    store.write_shard(2, "tower1", _tower_payload(2, 1))  # every shard, but no commit
    assert _reopen(store).step == 1
    _write_checkpoint(store, 3)
    assert [r.step for r in store.committed()] == [1, 3]
    assert list((tmp_path / ckpt.STAGING).iterdir()) == []


def test_commit_names_a_missing_shard(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    store.write_shard(5, "tower0", _tower_payload(5, 0))
    with pytest.raises(CheckpointError, match=r"shard 'tower1' is missing"):
        store.commit(5, _shared(5), _config())
    assert store.latest() is None


def test_keep_last_prunes_only_old_committed_checkpoints(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    for step in (10, 20, 30, 40):
        _write_checkpoint(store, step)
    store.write_shard(50, "tower0", _tower_payload(50, 0))  # a later step being written: must survive pruning
    assert [r.step for r in store.committed()] == [30, 40]
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.STAGING, ckpt.TRASH, "step-000000030", "step-000000040"]
    assert list((tmp_path / ckpt.TRASH).iterdir()) == []
    assert [p.name for p in (tmp_path / ckpt.STAGING).iterdir()] == ["step-000000050"]
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointStore(tmp_path, keep_last=0)


def test_recommitting_a_step_replaces_it_whole(tmp_path):
    # A run resumed from an older checkpoint reaches the same step again.
    store = CheckpointStore(tmp_path, keep_last=3)
    _write_checkpoint(store, 4)
    store.write_shard(4, "tower0", {"mark": torch.tensor(1)})
    store.write_shard(4, "tower1", {"mark": torch.tensor(2)})
    store.commit(4, {"mark": torch.tensor(3)}, _config())
    ref = _reopen(store)
    assert [store.load(ref, n)["mark"].item() for n in (*TOWERS, "shared")] == [1, 2, 3]


def test_committing_an_earlier_step_drops_the_abandoned_later_ones(tmp_path):
    # Resumed from step 20 because step 30 was damaged: step 30 must not be the next resume's pick,
    # and the new step 25 must survive pruning even though 30 had the higher number.
    for step in (10, 20, 30):
        _write_checkpoint(CheckpointStore(tmp_path, keep_last=3), step)
    store = CheckpointStore(tmp_path, keep_last=1)
    _write_checkpoint(store, 25)
    assert [r.step for r in store.committed()] == [25]
    _assert_is_step(store, _reopen(store), 25)


def test_folders_without_a_manifest_are_ignored(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    _write_checkpoint(store, 1)
    (tmp_path / "step-000000009").mkdir()  # e.g. copied by hand, half done
    assert _reopen(store).step == 1


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
        store.commit(1, {"loss": np.float64(1.0)}, _config())


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
    ref = _write_checkpoint(store, 1)
    marker = tmp_path / "code-ran"
    evil = {"format_version": 1, "step": 1, "payload": {"weights": _RunsCode(marker)}}
    with open(ref.path / "tower0.pt", "wb") as f:
        if form == "torch zip":
            torch.save(evil, f)
        else:
            pickle.dump(evil, f, protocol=2)  # the protocol torch.save itself uses
    _rewrite_manifest_entry(ref, "tower0")  # the digest is no defence: an attacker can rewrite it too
    with pytest.raises(CheckpointError, match=r"tower0\.pt: refused.*posix\.system.*must never run code"):
        store.load(_reopen(store), "tower0")
    assert not marker.exists()


def test_truncated_shard_names_the_file_and_sizes(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    ref = _write_checkpoint(store, 1)
    shard = ref.path / "tower1.pt"
    size = shard.stat().st_size
    os.truncate(shard, size // 2)
    with pytest.raises(CheckpointError, match=rf"tower1\.pt: truncated or altered: {size // 2} bytes, the manifest recorded {size}"):
        store.load(ref, "tower1")
    with pytest.raises(CheckpointError, match=r"tower1\.pt: truncated"):
        store.verify(ref)
    # Even when the manifest is made to agree, the torch reader's failure is named.
    _rewrite_manifest_entry(ref, "tower1")
    with pytest.raises(CheckpointError, match=r"tower1\.pt: not a readable torch file"):
        store.load(_reopen(store), "tower1")


def test_flipped_byte_and_missing_files_are_named(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    ref = _write_checkpoint(store, 1)
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
    ref = _write_checkpoint(store, 1)
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
    store.commit(1, {}, _config())

    def draw():
        return (torch.rand(5).tolist(), np.random.standard_normal(5).tolist(), [random.random() for _ in range(5)], random.gauss(0, 1))

    expected = draw()
    draw()  # move every generator on
    restore_rng_state(store.load(_reopen(store), "tower0")["rng"])
    assert draw() == expected


# ---------------------------------------------------------------- killed writers

# Calls a writer makes while saving; a test pauses the writer at one of them and SIGKILLs it there.
_HOOKED = ("write", "fsync", "replace")


def _writer_child(directory: str, kill_at: int | None, conn) -> None:
    """Writes the checkpoint at step 2 in a forked process, pausing forever at event number `kill_at`.

    Events are the data chunks torch.save streams (half the chunk is written
    before pausing, so the file is torn mid-write), the fsyncs and the renames.
    """
    events: list[str] = []
    real_write, real_fsync, real_replace = ckpt._HashingWriter.write, os.fsync, os.replace

    def event(label: str, partial=None) -> None:
        if len(events) == kill_at:
            if partial is not None:
                partial()
            conn.send(("paused", label))
            time.sleep(600)
        events.append(label)

    def write(self, data):
        def torn() -> None:
            real_write(self, bytes(data)[: len(data) // 2])
            self.file.flush()  # so the torn half really is in the file when the kill comes

        event("write", torn)
        return real_write(self, data)

    def fsync(fd):
        event("fsync")
        return real_fsync(fd)

    def replace(src, dst):
        event(f"replace {Path(src).parent.name}/{Path(src).name} -> {Path(dst).name}")
        return real_replace(src, dst)

    ckpt._HashingWriter.write, os.fsync, os.replace = write, fsync, replace
    _write_checkpoint(CheckpointStore(Path(directory), keep_last=3), 2)
    conn.send(("done", events))


def _fork_writer(directory: Path, kill_at: int | None):
    context = multiprocessing.get_context("fork")  # no re-import of torch: dozens of kill points stay fast
    parent_end, child_end = context.Pipe()
    process = context.Process(target=_writer_child, args=(str(directory), kill_at, child_end), daemon=True)
    process.start()
    if not parent_end.poll(30):
        process.kill()
        raise AssertionError(f"writer child gave no sign of life (kill_at={kill_at})")
    message = parent_end.recv()
    return process, message


def _kill_points(events: list[str]) -> list[int]:
    """Every fsync and rename, and the first, middle and last chunk of each file's data.

    Killing at each of the ~170 chunks would add nothing the first, middle and
    last do not show, and would triple the test's time.
    """
    points, run = [], []
    for index, label in enumerate([*events, "end"]):
        if label == "write":
            run.append(index)
            continue
        if run:
            points.extend(sorted({run[0], run[len(run) // 2], run[-1]}))
            run = []
        if label != "end":
            points.append(index)
    return points


def test_writer_killed_at_each_point_leaves_old_or_new_never_a_torn_checkpoint(tmp_path):
    trace_dir = tmp_path / "trace"
    _write_checkpoint(CheckpointStore(trace_dir, keep_last=3), 1)
    process, (kind, events) = _fork_writer(trace_dir, None)
    process.join(10)
    assert kind == "done" and process.exitcode == 0
    # The commit point: the staging folder renamed into place. Before it, step 2 must be invisible.
    publish = next(i for i, e in enumerate(events) if e == "replace .staging/step-000000002 -> step-000000002")
    assert events.count("write") >= 14 and events.count("fsync") >= 14  # every file hashed through and fsynced

    for kill_at in _kill_points(events):
        directory = tmp_path / f"kill-{kill_at}"
        store = CheckpointStore(directory, keep_last=3)
        _write_checkpoint(store, 1)
        process, (kind, label) = _fork_writer(directory, kill_at)
        assert kind == "paused", f"kill point {kill_at} not reached"
        os.kill(process.pid, signal.SIGKILL)
        process.join(10)
        assert process.exitcode == -signal.SIGKILL

        ref = _reopen(CheckpointStore(directory, keep_last=3))
        expected = 1 if kill_at <= publish else 2
        assert ref.step == expected, f"killed at {kill_at} ({label}): latest is step {ref.step}, expected {expected}"
        _assert_is_step(store, ref, expected)
        store.verify(store.committed()[0])  # the previous checkpoint is intact either way

        # The run restarts and checkpoints again: the debris of the killed attempt goes away.
        _write_checkpoint(store, 3)
        assert _reopen(store).step == 3
        assert list((directory / ckpt.STAGING).iterdir()) == []
        assert not [p for p in directory.rglob("*") if ".tmp-" in p.name]


_SLOW_WRITER = textwrap.dedent(
    """
    import sys, time, torch
    from pathlib import Path
    from alexserve.checkpoint import store as ckpt

    real_write = ckpt._HashingWriter.write
    def slow_write(self, data):  # a slow disk, 1 MB per 5 ms: the kill lands mid-file
        view = memoryview(data).cast("B")
        for start in range(0, len(view), 1 << 20):
            real_write(self, view[start : start + (1 << 20)])
            time.sleep(0.005)
        return len(view)
    ckpt._HashingWriter.write = slow_write

    store = ckpt.CheckpointStore(Path(sys.argv[1]), keep_last=2)
    for step in range(1, 1000):
        for tower in range(2):
            big = torch.full((2_000_000,), float(step * 10 + tower))  # 8 MB, many chunks
            store.write_shard(step, f"tower{tower}", {"model": {"conv1.weight": big}})
        store.commit(step, {"data": {"global_step": step}}, {"model": {}})
        print(step, flush=True)
    """
)


# About 0.3 s per shard here: the delays land inside tower0, between the shards, inside tower1 or the commit.
@pytest.mark.parametrize("extra_delay", [0.1, 0.3, 0.6])
def test_real_process_killed_while_writing_big_shards(tmp_path, extra_delay):
    script = tmp_path / "writer.py"
    script.write_text(_SLOW_WRITER)
    directory = tmp_path / "ckpt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, str(script), str(directory)], stdout=subprocess.PIPE, env=env, text=True)
    try:
        committed = int(child.stdout.readline())  # step 1 is committed; step 2 is being written
        time.sleep(extra_delay)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    assert committed == 1 and child.returncode == -signal.SIGKILL

    store = CheckpointStore(directory, keep_last=2)
    ref = _reopen(store)
    assert ref.step >= 1
    for tower in range(2):
        weights = store.load(ref, f"tower{tower}")["model"]["conv1.weight"]
        assert torch.all(weights == ref.step * 10 + tower)
    assert store.load_shared(ref)["data"]["global_step"] == ref.step
