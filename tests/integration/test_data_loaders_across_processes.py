"""The two towers of a pair, each in its own process, read identical batches.

Each tower is this file run as a script (`python test_data_loaders_across_processes.py PREPARED_TREE`), with an almost
empty environment, printing the checksums of its first batches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from alexserve.data.factory import build_train_source
from helpers.datasets import checksum, folder_job, tiny_prepared_tree
from helpers.processes import REPO, TESTS, wait_all


def first_batches(prepared: Path) -> list[str]:
    """Checksums of the first 4 batches of epoch 1 of the small job's train source."""
    source = build_train_source(folder_job(prepared, batch_size=4, input_size=64, seed=4), device=torch.device("cpu"))
    try:
        return [checksum(images) for images, _ in source.batches(1)][:4]
    finally:
        source.close()


def test_towers_in_separate_processes_agree():
    _, dst, _ = tiny_prepared_tree()
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "PATH": ""}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(dst)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for tower, (code, out, err) in enumerate(wait_all(procs, timeout=120)):
        assert code == 0, f"tower {tower}'s process exited {code}:\n{err[-3000:]}"
        results.append(json.loads(out.strip().splitlines()[-1]))
    here = first_batches(dst)
    assert results[0] == results[1] == here and len(here) == 4


if __name__ == "__main__":
    print(json.dumps(first_batches(Path(sys.argv[1]))))
