"""Training's counters as telemetry's plain values (contract/telemetry.py): what the trainer hands its sink."""

from __future__ import annotations

import psutil
import torch

from alexserve.contract.telemetry import EvalSummary, ExchangeTime, IntervalSummary
from alexserve.parallel.exchange import ExchangeTotals
from alexserve.train.evaluation import EvalResult
from alexserve.train.progress import IntervalMeter

_THIS_PROCESS = psutil.Process()


def device_memory_bytes(device: torch.device) -> int:
    """CUDA memory allocated on `device`, or this process's resident set size on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return int(_THIS_PROCESS.memory_info().rss)


def interval_summary(
    meter: IntervalMeter,
    epoch: int,
    global_step: int,
    learning_rate: float,
    exchanged: dict[tuple[str, str], ExchangeTotals],
    device: torch.device,
) -> IntervalSummary:
    return IntervalSummary(
        epoch=epoch,
        global_step=global_step,
        steps=meter.steps,
        images=meter.images,
        loss=meter.read().loss,
        learning_rate=learning_rate,
        step_seconds=list(meter.step_seconds),
        data_wait_seconds=meter.data_wait_seconds,
        exchange=[
            ExchangeTime(point, direction, totals.seconds, totals.bytes)
            for (point, direction), totals in exchanged.items()
        ],
        memory_bytes=device_memory_bytes(device),
    )


def eval_summary(epoch: int, global_step: int, results: dict[str, EvalResult]) -> EvalSummary:
    center, ten = results["center"], results.get("ten_crop")
    return EvalSummary(
        epoch=epoch,
        global_step=global_step,
        center_top1_error=center.top1_error,
        center_top5_error=center.top5_error,
        ten_crop_top1_error=ten.top1_error if ten else None,
        ten_crop_top5_error=ten.top5_error if ten else None,
    )
