"""The doctor's throughput: the training step, timed the way training runs it.

Training sets the GPU's math once (`configure_device_math` with `train.allow_tf32`, default true: TF32 and
cudnn.benchmark) and never reads a step's figures back on its path (train/step.py), so the doctor times the
step under that same policy, with no host read inside the timed steps: on a GPU a pair of CUDA events around
the `steps` calls and one synchronisation at the end; on CPU the wall clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from alexserve.config import TrainConfig
from alexserve.train.precision import configure_device_math

WARMUP_STEPS = 2  # the first steps pay for cudnn.benchmark's search and the allocator's growth


def time_training_steps(step: Callable[[], object], steps: int, device: torch.device) -> float:
    """Seconds taken by `steps` calls of `step` (after `WARMUP_STEPS`), under training's default math policy."""
    configure_device_math(device, TrainConfig().allow_tf32)
    for _ in range(WARMUP_STEPS):
        step()
    if device.type != "cuda":
        began = time.perf_counter()
        for _ in range(steps):
            step()
        return time.perf_counter() - began
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)  # the warm-up is not in the figure
    start.record()
    for _ in range(steps):
        step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3
