"""What a worker tells its supervisor; a no-op when it runs without one."""

from __future__ import annotations

import os

import torch

from alexserve.parallel.exchange import ExchangeTotals
from alexserve.parallel.topology import Topology
from alexserve.train.evaluation import EvalResult
from alexserve.train.progress import IntervalMeter


def device_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:  # resident set size, from the kernel: no extra dependency
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Reporter:
    def __init__(self, link, topology: Topology):
        self.link, self.topology = link, topology

    def _send(self, make) -> None:
        if self.link is not None:
            self.link.send(make())

    def interval(self, meter: IntervalMeter, epoch: int, global_step: int, lr: float,
                 exchange: dict[tuple[str, str], ExchangeTotals]) -> None:
        from alexserve.contract.worker_messages import ExchangeTiming, StepReport, summarize_seconds

        self._send(lambda: StepReport(
            job_id=self.link.job_id, rank=self.topology.rank, pair=self.topology.pair, tower=self.topology.tower,
            epoch=epoch, step=global_step, steps=meter.steps, loss=meter.loss_sum / max(meter.images, 1), learning_rate=lr,
            images=meter.images, step_seconds=summarize_seconds(meter.step_seconds), data_wait_seconds=meter.data_wait_seconds,
            exchange=[ExchangeTiming(point=p, direction=d, seconds=e.seconds, bytes=e.bytes) for (p, d), e in exchange.items()],
            device_memory_bytes=device_memory_bytes(self.topology.device),
        ))

    def evaluation(self, epoch: int, global_step: int, results: dict[str, EvalResult]) -> None:
        if not self.topology.is_primary:
            return
        from alexserve.contract.worker_messages import EvalReport

        ten = results.get("ten_crop")
        self._send(lambda: EvalReport(
            job_id=self.link.job_id, epoch=epoch, step=global_step,
            center_top1_error=results["center"].top1_error, center_top5_error=results["center"].top5_error,
            ten_crop_top1_error=ten.top1_error if ten else None, ten_crop_top5_error=ten.top5_error if ten else None,
        ))

    def checkpoint(self, global_step: int) -> None:
        from alexserve.contract.worker_messages import CheckpointEvent

        self._send(lambda: CheckpointEvent(job_id=self.link.job_id, step=global_step))

    def state(self, state: str, global_step: int) -> None:
        if not self.topology.is_primary:
            return
        from alexserve.contract.worker_messages import StateEvent

        self._send(lambda: StateEvent(job_id=self.link.job_id, state=state, step=global_step))
