"""`alexserve doctor` on a CPU host, as a user runs it: two real tower processes over gloo, DALI's CPU path.

What a GPU host adds (NCCL between GPU 0 and 1, DALI's `mixed` decode, CUDA-event throughput) runs only where
there are GPUs; on this CPU the command must pass every check it can run and skip the GPU one.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from helpers.processes import REPO

pytestmark = pytest.mark.timeout(180)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU subset; a GPU host runs the GPU checks instead")
def test_doctor_passes_the_cpu_subset_and_prints_a_table():
    result = subprocess.run(
        [sys.executable, "-m", "alexserve.cli", "doctor", "--steps", "5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr[-3000:]
    rows = {line.split("  ")[0]: line for line in out.splitlines()}
    assert "skip" in rows["GPUs seen"]
    for name in (
        "send/recv (gloo, CPU, 2 processes)",
        "two-tower step vs grouped (gloo)",
        "throughput (two-tower pair, gloo)",
        "DALI decode + augment (CPU)",
    ):
        assert name in rows and "  pass  " in rows[name], f"{name}:\n{out}"
    assert "images/s" in rows["throughput (two-tower pair, gloo)"]
    assert out.splitlines()[-1] == "4 passed, 0 failed, 1 skipped"
