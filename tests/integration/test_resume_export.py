"""Checkpoints end to end: exact resume after a stop or a crash, clear refusals, export."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexserve.checkpoint.export import find_checkpoint
from alexserve.checkpoint.run_checkpointer import SHARD_NAMES
from alexserve.checkpoint.store import CheckpointStore
from alexserve.config import JobConfig
from alexserve.model import AlexNetTower
from alexserve.model.exported import load_exported
from alexserve.parallel.exchange import PeerExchange
from alexserve.parallel.topology import Topology
from alexserve.train.step import tower_forward_logits
from helpers.processes import REPO, rank_main, run_ranks, start_ranks, wait_all
from helpers.tensors import context
from helpers.worker_jobs import CHECKPOINTED_JOB


def worker(run_dir: Path, *extra: str, timeout: float = 120) -> list[tuple[int, str, str]]:
    argv = ["-m", "alexserve.worker", *CHECKPOINTED_JOB, "--set", f"train.run_dir={run_dir}", *extra]
    return wait_all(start_ranks(argv, 2), timeout)


def final_state(run_dir: Path) -> dict[str, dict]:
    store = CheckpointStore(run_dir / "checkpoints", keep_last=3, shard_names=SHARD_NAMES)
    ref = store.latest()
    assert ref is not None and ref.step == 16, f"expected a final checkpoint at step 16, got {ref}"
    return {name: store.load(ref, name) for name in SHARD_NAMES}


def assert_bit_identical(expected: dict, resumed: dict) -> None:
    for name in SHARD_NAMES:
        for key, value in expected[name]["model"].items():
            torch.testing.assert_close(
                resumed[name]["model"][key], value, rtol=0, atol=0, msg=context(f"{name} {key} differs after resume")
            )
        for index, state in expected[name]["optimizer"]["state"].items():
            torch.testing.assert_close(
                resumed[name]["optimizer"]["state"][index]["momentum_buffer"],
                state["momentum_buffer"],
                rtol=0,
                atol=0,
                msg=context(f"{name} momentum buffer {index} differs after resume"),
            )


def history_without_times(run_dir: Path) -> list[str]:
    """history.jsonl's lines without the fields that differ between equal runs: timestamp and epoch_seconds."""
    lines = []
    for line in (run_dir / "history.jsonl").read_text().splitlines():
        line = line.split('"timestamp"')[0]
        before, after = line.split('"epoch_seconds"')
        lines.append(before + after.split(",", 1)[1])
    return lines


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    for code, _, err in worker(run_dir):
        assert code == 0, err[-3000:]
    return run_dir


def test_stop_and_resume_is_bit_exact(uninterrupted, tmp_path):
    for code, _, err in worker(tmp_path, "--set", "train.max_steps=5"):
        assert code == 0, err[-3000:]
    results = worker(tmp_path, "--resume")
    assert all(code == 0 for code, _, _ in results), results[0][2][-3000:]
    assert "resumed from the checkpoint at step 5" in results[0][2]
    assert_bit_identical(final_state(uninterrupted), final_state(tmp_path))
    # The history of the resumed run has each epoch once, and agrees with the uninterrupted one.
    assert history_without_times(tmp_path) == history_without_times(uninterrupted)
    assert (tmp_path / "history.png").stat().st_size > 10_000


def test_crash_and_resume_is_bit_exact(uninterrupted, tmp_path):
    procs = start_ranks(["-m", "alexserve.worker", *CHECKPOINTED_JOB, "--set", f"train.run_dir={tmp_path}"], 2)
    deadline = time.monotonic() + 90
    while not (tmp_path / "checkpoints" / "step-000000012").exists():  # past an epoch end and two periodic ones
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no checkpoint at step 12"
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.communicate()
    results = worker(tmp_path, "--resume")
    assert all(code == 0 for code, _, _ in results), results[0][2][-3000:]
    assert "resumed from the checkpoint at step" in results[0][2]
    assert_bit_identical(final_state(uninterrupted), final_state(tmp_path))


def test_resume_with_another_model_says_which_field(uninterrupted, tmp_path):
    shutil.copytree(uninterrupted / "checkpoints", tmp_path / "checkpoints")
    for code, _, err in worker(tmp_path, "--resume", "--set", "model.width=0.25"):
        assert code == 2
        assert "model.width is 0.125 in the checkpoint but 0.25" in err, err[-2000:]
    # Same shapes, another function: the printed LRN is five times stronger than the one trained.
    for code, _, err in worker(tmp_path, "--resume", "--set", "model.lrn_alpha_convention=printed"):
        assert code == 2
        assert "model.lrn_alpha_convention is 'authors_code' in the checkpoint but 'printed'" in err, err[-2000:]


def rank_checkpoint_logits(topology: Topology, out: Path, checkpoints: str) -> None:
    """Loads this tower's shard of the checkpoint and saves the towers' logits on a fixed batch."""
    store, ref = find_checkpoint(Path(checkpoints))
    job = JobConfig.model_validate(store.load_config(ref))
    tower = AlexNetTower(job.model, topology.tower)
    tower.load_state_dict(store.load(ref, f"tower{topology.tower}")["model"])
    tower.eval()
    exchange = PeerExchange(topology.rank, topology.peer, topology.tower)
    g = torch.Generator().manual_seed(5)
    images = torch.randn(4, 3, job.model.input_size, job.model.input_size, generator=g) * 50
    with torch.no_grad():
        logits = tower_forward_logits(tower, exchange, images, None)
    torch.save({"images": images, "logits": logits}, out / f"rank{topology.rank}.pt")


def test_export_loads_alone_and_gives_the_towers_logits(uninterrupted, tmp_path):
    out = tmp_path / "alexnet.pt"
    subprocess.run(
        [sys.executable, "-m", "alexserve", "export", str(uninterrupted / "checkpoints"), str(out)],
        check=True,
        cwd=REPO,
        timeout=60,
    )
    # Loadable with torch alone (weights_only), and into the grouped model.
    raw = torch.load(out, weights_only=True)
    assert raw["step"] == 16 and raw["state_dict"]["fc8.weight"].shape == (10, 2 * 256)
    model, _ = load_exported(out)
    run_ranks(rank_checkpoint_logits, tmp_path, checkpoints=str(uninterrupted / "checkpoints"))
    towers = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    with torch.no_grad():
        grouped = model(towers[0]["images"])
    torch.testing.assert_close(
        grouped,
        towers[0]["logits"],
        rtol=1e-5,
        atol=1e-5,
        msg=context("the exported model's logits differ from the towers'"),
    )
    torch.testing.assert_close(
        towers[1]["logits"], towers[0]["logits"], rtol=0, atol=0, msg=context("the two towers' logits differ")
    )


if __name__ == "__main__":
    rank_main()
