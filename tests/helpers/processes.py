"""Helpers for tests that start real processes: real multi-process runs over gloo on loopback, always with a timeout.

A distributed test keeps what its ranks run beside what it asserts. The rank function is a plain function of the
test module, `fn(topology, out_dir, **kwargs)`; the module ends with

    if __name__ == "__main__":
        rank_main()

and the test calls `run_ranks(fn, out_dir, key=value...)`. Each rank is then a real process running the test file as
a script (`python tests/integration/test_x.py FUNCTION OUT KWARGS_JSON`, with RANK, WORLD_SIZE and MASTER_* set), in a
process group made by the library's own `process_group`. A rank that hangs is killed and fails the test after
`timeout`; a rank that fails has its exit code and the tail of its stderr in the assertion message.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1]  # on PYTHONPATH, so `helpers.*` imports in child processes

# The process group's timeout in rank processes: a lost peer fails a collective after this, well inside run_ranks'.
GROUP_TIMEOUT_SECONDS = 30
# The exit code of a rank whose function raised (the traceback is on its stderr), told apart from a crash at start-up.
RANK_FUNCTION_RAISED = 17


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world_size: int, port: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")]),
    )
    env.update(extra)
    return env


def start_ranks(argv: list[str], world_size: int, **extra: str) -> list[subprocess.Popen]:
    """One real process per rank, rendezvous on a fresh loopback port."""
    port = free_port()
    return [
        subprocess.Popen(
            [sys.executable, *argv],
            env=rank_env(r, world_size, port, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world_size)
    ]


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) per rank; kills every rank and fails if any is still running `timeout` s from now."""
    deadline = time.monotonic() + timeout
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            break
        results.append((p.returncode, out, err))
    else:
        return results
    lines = []
    for rank, p in enumerate(procs):
        if rank < len(results):
            code, _, err = results[rank]
            state = f"exited {code}"
        else:
            state = "still running: killed" if p.poll() is None else f"exited {p.returncode}"
            p.kill()
            err = p.communicate()[1]
        lines.append(f"rank {rank} ({' '.join(map(str, p.args[1:]))}) {state}; its stderr ends:\n{(err or '')[-1500:]}")
    pytest.fail(f"ranks still running after {timeout}s (a hang?):\n" + "\n".join(lines))


def run_ranks(
    rank_fn: Callable[..., None], out_dir: Path, *, world_size: int = 2, timeout: float = 60, **kwargs
) -> list[tuple[int, str, str]]:
    """Runs `rank_fn(topology, out_dir, **kwargs)` in `world_size` rank processes over gloo; fails unless all exit 0.

    `rank_fn` is a module-level function of a test module that ends with `rank_main()` (see the module docstring);
    `kwargs` travel as JSON. Returns (exit code, stdout, stderr) per rank.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = [inspect.getfile(rank_fn), rank_fn.__name__, str(out_dir), json.dumps(kwargs)]
    results = wait_all(start_ranks(argv, world_size), timeout)
    for rank, (code, _, err) in enumerate(results):
        why = " (its rank function raised)" if code == RANK_FUNCTION_RAISED else ""
        assert code == 0, f"rank {rank} of {rank_fn.__name__} exited {code}{why}:\n{err[-3000:]}"
    return results


def rank_main() -> None:
    """A rank process started by `run_ranks`: joins the process group and runs the named function of `__main__`."""
    import torch

    from alexserve.config import DistConfig
    from alexserve.parallel.process_group import process_group
    from alexserve.parallel.topology import topology_from_env

    name, out_dir, kwargs = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    rank_fn = getattr(sys.modules["__main__"], name)
    torch.set_num_threads(1)
    topology = topology_from_env(DistConfig(backend="gloo", device="cpu"))
    try:
        with process_group(topology, timeout_seconds=GROUP_TIMEOUT_SECONDS):
            rank_fn(topology, out_dir, **kwargs)
    except Exception:
        traceback.print_exc()
        sys.stderr.flush()
        sys.exit(RANK_FUNCTION_RAISED)
