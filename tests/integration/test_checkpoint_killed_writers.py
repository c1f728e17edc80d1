"""Writers killed mid-checkpoint leave the old checkpoint or the new one, never a torn one.

A forked writer is paused and SIGKILLed at each write, fsync and rename; a real process writing big shards on a slow
disk (this file run as a script) is SIGKILLed at several moments.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexserve.checkpoint import files as ckpt_files
from alexserve.checkpoint import store as ckpt
from alexserve.checkpoint.store import CheckpointStore
from helpers.checkpoints import assert_filled_with, assert_is_step, latest, write_checkpoint
from helpers.processes import REPO, TESTS

# ---------------------------------------------------------------- a forked writer, killed at each point
# The calls a writer makes while saving (write, fsync, replace): a test pauses the writer at one and SIGKILLs it there.


def _writer_child(directory: str, kill_at: int | None, conn) -> None:
    """Writes the checkpoint at step 2 in a forked process, pausing forever at event number `kill_at`.

    Events are the data chunks torch.save streams (half the chunk is written
    before pausing, so the file is torn mid-write), the fsyncs and the renames.
    """
    events: list[str] = []
    real_write, real_fsync, real_replace = ckpt_files._HashingWriter.write, os.fsync, os.replace

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

    ckpt_files._HashingWriter.write, os.fsync, os.replace = write, fsync, replace
    write_checkpoint(CheckpointStore(Path(directory), keep_last=3), 2)
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
    write_checkpoint(CheckpointStore(trace_dir, keep_last=3), 1)
    process, (kind, events) = _fork_writer(trace_dir, None)
    process.join(10)
    assert kind == "done" and process.exitcode == 0
    # The commit point: the staging folder renamed into place. Before it, step 2 must be invisible.
    publish = next(i for i, e in enumerate(events) if e == "replace .staging/step-000000002 -> step-000000002")
    assert events.count("write") >= 14 and events.count("fsync") >= 14  # every file hashed through and fsynced

    for kill_at in _kill_points(events):
        directory = tmp_path / f"kill-{kill_at}"
        store = CheckpointStore(directory, keep_last=3)
        write_checkpoint(store, 1)
        process, (kind, label) = _fork_writer(directory, kill_at)
        assert kind == "paused", f"kill point {kill_at} not reached"
        os.kill(process.pid, signal.SIGKILL)
        process.join(10)
        assert process.exitcode == -signal.SIGKILL

        ref = latest(CheckpointStore(directory, keep_last=3))
        expected = 1 if kill_at <= publish else 2
        assert ref.step == expected, f"killed at {kill_at} ({label}): latest is step {ref.step}, expected {expected}"
        assert_is_step(store, ref, expected)
        store.verify(store.committed()[0])  # the previous checkpoint is intact either way

        # The run restarts and checkpoints again: the debris of the killed attempt goes away.
        write_checkpoint(store, 3)
        assert latest(store).step == 3
        assert list((directory / ckpt.STAGING).iterdir()) == []
        assert not [p for p in directory.rglob("*") if ".tmp-" in p.name]


# ---------------------------------------------------------------- a real process, killed while writing big shards


def slow_writer(directory: Path) -> None:
    """Checkpoints of two 8 MB shards, step after step, on a slow disk; prints each committed step."""
    real_write = ckpt_files._HashingWriter.write

    def slow_write(self, data):  # a slow disk, 1 MB per 5 ms: the kill lands mid-file
        view = memoryview(data).cast("B")
        for start in range(0, len(view), 1 << 20):
            real_write(self, view[start : start + (1 << 20)])
            time.sleep(0.005)
        return len(view)

    ckpt_files._HashingWriter.write = slow_write
    store = ckpt.CheckpointStore(directory, keep_last=2)
    for step in range(1, 1000):
        for tower in range(2):
            big = torch.full((2_000_000,), float(step * 10 + tower))  # 8 MB, many chunks
            store.write_shard(step, f"tower{tower}", {"model": {"conv1.weight": big}})
        store.commit(step, {"data": {"global_step": step}}, {"model": {}})
        print(step, flush=True)


# About 0.3 s per shard here: the delays land inside tower0, between the shards, inside tower1 or the commit.
@pytest.mark.parametrize("extra_delay", [0.1, 0.3, 0.6])
def test_real_process_killed_while_writing_big_shards(tmp_path, extra_delay):
    directory = tmp_path / "ckpt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, __file__, str(directory)], stdout=subprocess.PIPE, env=env, text=True)
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
    ref = latest(store)
    assert ref.step >= 1
    for tower in range(2):
        weights = store.load(ref, f"tower{tower}")["model"]["conv1.weight"]
        assert_filled_with(weights, ref.step * 10 + tower, f"step {ref.step} tower{tower} conv1.weight")
    assert store.load_shared(ref)["data"]["global_step"] == ref.step


if __name__ == "__main__":
    slow_writer(Path(sys.argv[1]))
