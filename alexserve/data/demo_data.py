"""The demo's dataset: made once with `alexserve synth` + `alexserve prepare`, then reused.

Local rank 0 builds it into a temporary folder and renames it into place, so a
half-built dataset is never read; the other ranks wait for the rename.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from alexserve.config import JobConfig, paper_scale_size
from alexserve.data.prepare import prepare
from alexserve.data.synth import generate

DEMO_NUM_CLASSES = 10
DEMO_TRAIN_PER_CLASS = 200
DEMO_VAL_PER_CLASS = 40
WAIT_LIMIT_SECONDS = 600


def ensure_demo_dataset(job: JobConfig, local_rank: int) -> None:
    prepared = Path(job.data.train_dir).parent
    if (prepared / "stats.npz").exists():
        return
    if local_rank != 0:
        deadline = time.monotonic() + WAIT_LIMIT_SECONDS
        while not (prepared / "stats.npz").exists():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"local rank 0 did not finish the demo dataset in {prepared} within {WAIT_LIMIT_SECONDS}s"
                )
            time.sleep(0.5)
        return
    print(f"demo: making the demo dataset in {prepared} (once; about half a minute)", file=sys.stderr, flush=True)
    staging = prepared.with_name(f"{prepared.name}.building-{os.getpid()}")
    raw = staging / "synth"
    generate(
        raw,
        num_classes=job.model.num_classes or DEMO_NUM_CLASSES,
        train_per_class=DEMO_TRAIN_PER_CLASS,
        val_per_class=DEMO_VAL_PER_CLASS,
        seed=job.train.seed,
    )
    scale_size = job.data.scale_size or paper_scale_size(job.model.input_size)
    prepare(raw, staging / "prepared", scale_size=scale_size, workers=os.cpu_count())
    shutil.rmtree(raw)
    prepared.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging / "prepared", prepared)
    shutil.rmtree(staging, ignore_errors=True)
