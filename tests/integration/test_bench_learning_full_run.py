"""`python -m alexserve.bench.learning` run whole, as documented (slow: run with -m slow)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_full_benchmark_run(tmp_path: Path):
    """The whole benchmark as documented: about 3 minutes on two idle cores, 5 or more when they are shared."""
    out = tmp_path / "learning.json"
    command = [sys.executable, "-m", "alexserve.bench.learning", "--run-dir", str(tmp_path / "runs"), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pair / single" in done.stdout and "CPU cores" in done.stdout
    figures = json.loads(out.read_text())
    for name in ("pair", "single"):
        assert figures[name]["epochs_run"] >= 1
        assert figures[name]["final_top1_error"] < 0.5, f"{name} did not learn: {figures[name]}"
        assert (tmp_path / "runs" / name / "history.jsonl").exists(), name
    assert [s["features"] for s in figures["svm"]] == ["8x8 originals", "prepared 64-px grey centre crops"]
    assert all(s["top1_error"] < 0.05 for s in figures["svm"])
