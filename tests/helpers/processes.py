"""Helpers for tests that start real processes: real multi-process runs over gloo on loopback, always with a timeout."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1]  # on PYTHONPATH, so `helpers.*` imports in child processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world_size: int, port: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")]),
    )
    env.update(extra)
    return env


def start_ranks(argv: list[str], world_size: int, **extra: str) -> list[subprocess.Popen]:
    """One real process per rank, rendezvous on a fresh loopback port."""
    port = free_port()
    return [
        subprocess.Popen([sys.executable, *argv], env=rank_env(r, world_size, port, **extra),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for r in range(world_size)
    ]


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) per rank; kills every rank and fails if any outlives `timeout`."""
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append((p.returncode, out, err))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"ranks still running after {timeout}s (hang?): " + "; ".join(str(p.args) for p in procs))
    return results


def run_scenario(name: str, out_dir: Path, world_size: int = 2, timeout: float = 120, **extra: str) -> list[tuple[int, str, str]]:
    """Runs tests/helpers/dist_scenarios.py NAME in `world_size` ranks; each rank writes out_dir/rank{r}.pt."""
    procs = start_ranks([str(TESTS / "helpers" / "dist_scenarios.py"), name, str(out_dir)], world_size, **extra)
    results = wait_all(procs, timeout)
    for rank, (code, out, err) in enumerate(results):
        assert code == 0, f"rank {rank} of scenario {name} exited {code}:\n{err[-3000:]}"
    return results
