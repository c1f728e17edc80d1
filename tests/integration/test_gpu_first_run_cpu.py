"""deploy/gpu-first-run.sh --cpu: every step of the first-GPU script, run on the CPU at smoke sizes.

The steps (doctor, bench, a tiny tree, a two-rank job, its evaluation with both loaders, one rank killed) are the
GPU run's with the CPU device, so the script's own logic (waiting for a step, the kill, reading the exit code and
the message) is exercised before a GPU is lent. About 40 s on 2 cores.
"""

from __future__ import annotations

import os
import subprocess
import sys

from helpers.processes import REPO


def test_the_cpu_run_passes_every_step_and_rank_zero_exits_3_naming_its_peer(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        ["bash", str(REPO / "deploy" / "gpu-first-run.sh"), "--cpu", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    summary = (out / "summary.txt").read_text()
    assert done.returncode == 0, summary + done.stderr[-2000:]
    results = {line.split()[0]: line.split()[1] for line in summary.splitlines()[1:] if line[:1] != " "}
    assert results == {
        "host": "PASS",  # the torch line; nvidia-smi is skipped with --cpu
        "doctor": "PASS",
        "bench": "PASS",
        "data": "PASS",
        "train": "PASS",
        "device": "PASS",
        "eval-dali": "PASS",
        "eval-pil": "PASS",
        "kill": "PASS",
    }, summary
    assert "rank 0 exited 3" in summary and "lost" in summary
    assert (out / "bench-gpu.json").is_file() and any((out / "train-run" / "checkpoints").iterdir())
