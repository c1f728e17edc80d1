"""Issue 13's acceptance: two jobs submitted at once with the same run_dir; the second is refused and
the first's files stay byte-for-byte the same.

A real supervisor process and the real worker under torchrun (ALEXSERVE_TEST_FAKE_WORKER=1 swaps in the
stand-in). Before issue 13 both were accepted: the second resumed the first's checkpoints, and with
`keep_last_checkpoints: 1` it deleted them while pruning its own.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from alexserve.supervisor.client import SupervisorError
from helpers.supervisor import cleanup, start_supervisor, tiny_spec

pytestmark = pytest.mark.timeout(180)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below `folder` (relative path -> SHA-256 of its bytes)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_two_jobs_submitted_at_once_with_one_run_dir(tmp_path):
    sup = start_supervisor(tmp_path / "state")
    try:
        spec = tiny_spec(20, name="first", checkpoint_every_steps=10, keep_last_checkpoints=1)
        spec["run_dir"] = "shared"
        replies: dict[int, object] = {}

        def submit(n: int) -> None:
            try:
                replies[n] = sup.client.submit(spec, f"job{n}.json")
            except SupervisorError as err:
                replies[n] = err

        threads = [threading.Thread(target=submit, args=(n,)) for n in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        accepted = [r for r in replies.values() if isinstance(r, dict)]
        refused = [r for r in replies.values() if isinstance(r, SupervisorError)]
        assert len(accepted) == 1 and len(refused) == 1, replies
        first = accepted[0]["id"]
        assert f"already used by {first}" in str(refused[0]), refused
        assert [j["id"] for j in sup.client.list()] == [first]

        done = sup.client.wait_for(first, {"completed", "failed", "stopped"}, 150)
        assert done["state"] == "completed", f"{done['reason']}\n{sup.job_log(first)}"
        shared = Path(done["run_dir"])
        assert shared == (tmp_path / "state" / "runs" / "shared").resolve()
        before = snapshot(shared)
        assert any("checkpoints" in name for name in before), before

        # Again, by other spellings of the same folder: refused, nothing launched, nothing written.
        (shared.parent / "alias").symlink_to(shared)
        for run_dir in ("shared", "./shared", "alias", "shared/checkpoints"):
            again = dict(spec, run_dir=run_dir)
            with pytest.raises(SupervisorError, match=f"already used by {first}"):
                sup.client.submit(again, "again.json")
        for run_dir in ("/tmp", "../state/jobs"):
            with pytest.raises(SupervisorError, match="refused"):
                sup.client.submit(dict(spec, run_dir=run_dir), "outside.json")
        assert [j["id"] for j in sup.client.list()] == [first]
        assert snapshot(shared) == before
    finally:
        left = cleanup(sup)
        assert not left, f"worker processes outlived the supervisor: {left}"


def test_continues_takes_over_an_ended_jobs_folders_and_checkpoints(tmp_path):
    sup = start_supervisor(tmp_path / "state")
    try:
        spec = tiny_spec(10, name="first", checkpoint_every_steps=5)
        spec["run_dir"] = "run"
        first = sup.client.submit(spec, "first.json")["id"]
        done = sup.client.wait_for(first, {"completed", "failed"}, 120)
        assert done["state"] == "completed", f"{done['reason']}\n{sup.job_log(first)}"
        more = tiny_spec(20, name="more", checkpoint_every_steps=5)
        more["continues"] = first
        second = sup.client.submit(more, "more.json")["id"]
        done = sup.client.wait_for(second, {"completed", "failed"}, 120)
        assert done["state"] == "completed", f"{done['reason']}\n{sup.job_log(second)}"
        assert done["run_dir"] == sup.client.status(first)["run_dir"] and done["continues"] == first
        assert done["run_id"] == sup.client.status(first)["run_id"]
        assert done["step"] == 20 and done["newest_checkpoint_step"] == 20
        with pytest.raises(SupervisorError, match=f"already continued by {second}"):
            sup.client.submit(dict(more, name="twice"), "twice.json")
    finally:
        left = cleanup(sup)
        assert not left, f"worker processes outlived the supervisor: {left}"
