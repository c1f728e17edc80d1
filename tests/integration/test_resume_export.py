"""Checkpoints end to end: exact resume after a stop or a crash, clear refusals, export."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexserve.model.exported import load_exported
from alexserve.checkpoint.store import CheckpointStore
from alexserve.checkpoint.run_checkpointer import SHARD_NAMES
from helpers.processes import REPO, run_scenario, start_ranks, wait_all

# 256 images / 32 = 8 steps an epoch; 2 epochs; dropout on (the paper's 0.5), so its seeding is exercised too.
JOB = ["--set", "data.source=generated", "--set", "model.width=0.125", "--set", "model.input_size=64",
       "--set", "data.scale_size=73", "--set", "model.init_scheme=he", "--set", "optim.learning_rate=0.002",
       "--set", "data.generated_train_images=256", "--set", "data.generated_val_images=64", "--set", "train.batch_size=32",
       "--set", "train.num_epochs=2", "--set", "train.checkpoint_every_steps=3", "--set", "train.log_every_steps=1"]


def worker(run_dir: Path, *extra: str, timeout: float = 120) -> list[tuple[int, str, str]]:
    return wait_all(start_ranks(["-m", "alexserve.worker", *JOB, "--set", f"train.run_dir={run_dir}", *extra], 2), timeout)


def final_state(run_dir: Path) -> dict[str, dict]:
    store = CheckpointStore(run_dir / "checkpoints", keep_last=3, shard_names=SHARD_NAMES)
    ref = store.latest()
    assert ref is not None and ref.step == 16, f"expected a final checkpoint at step 16, got {ref}"
    return {name: store.load(ref, name) for name in SHARD_NAMES}


def assert_bit_identical(a: dict, b: dict) -> None:
    for name in SHARD_NAMES:
        for key, value in a[name]["model"].items():
            assert torch.equal(value, b[name]["model"][key]), f"{name} {key} differs after resume"
        for index, state in a[name]["optimizer"]["state"].items():
            assert torch.equal(state["momentum_buffer"], b[name]["optimizer"]["state"][index]["momentum_buffer"])


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
    lines = lambda d: [l.split('"timestamp"')[0] for l in (d / "history.jsonl").read_text().splitlines()]  # noqa: E731
    strip_seconds = lambda ls: [l.split('"epoch_seconds"')[0] + l.split('"epoch_seconds"')[1].split(",", 1)[1] for l in ls]  # noqa: E731
    assert strip_seconds(lines(tmp_path)) == strip_seconds(lines(uninterrupted))
    assert (tmp_path / "history.png").stat().st_size > 10_000


def test_crash_and_resume_is_bit_exact(uninterrupted, tmp_path):
    procs = start_ranks(["-m", "alexserve.worker", *JOB, "--set", f"train.run_dir={tmp_path}"], 2)
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
    import shutil

    shutil.copytree(uninterrupted / "checkpoints", tmp_path / "checkpoints")
    for code, _, err in worker(tmp_path, "--resume", "--set", "model.width=0.25"):
        assert code == 2
        assert "model.width is 0.125 in the checkpoint but 0.25" in err, err[-2000:]
    # Same shapes, another function: the printed LRN is five times stronger than the one trained.
    for code, _, err in worker(tmp_path, "--resume", "--set", "model.lrn_alpha_convention=printed"):
        assert code == 2
        assert "model.lrn_alpha_convention is 'authors_code' in the checkpoint but 'printed'" in err, err[-2000:]


def test_export_loads_alone_and_gives_the_towers_logits(uninterrupted, tmp_path):
    out = tmp_path / "alexnet.pt"
    subprocess.run([sys.executable, "-m", "alexserve", "export", str(uninterrupted / "checkpoints"), str(out)],
                   check=True, cwd=REPO, timeout=60)
    # Loadable with torch alone (weights_only), and into the grouped model.
    raw = torch.load(out, weights_only=True)
    assert raw["step"] == 16 and raw["state_dict"]["fc8.weight"].shape == (10, 2 * 256)
    model, _ = load_exported(out)
    run_scenario("checkpoint_logits", tmp_path, CKPT=str(uninterrupted / "checkpoints"))
    towers = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    with torch.no_grad():
        grouped = model(towers[0]["images"])
    torch.testing.assert_close(grouped, towers[0]["logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(towers[1]["logits"], towers[0]["logits"], rtol=0, atol=0)
