"""Process-group lifetime: always an explicit timeout, always torn down."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

from alexserve.parallel.topology import Topology


@contextlib.contextmanager
def process_group(topology: Topology, timeout_seconds: float) -> Iterator[None]:
    """Joins the job's process group (torchrun's env:// rendezvous) for the `with` block.

    The timeout bounds every send/recv: a peer that stops answering is declared lost
    after it instead of hanging the survivor forever.
    """
    kwargs = {}
    if topology.device.type == "cuda":
        torch.cuda.set_device(topology.device)
        kwargs["device_id"] = topology.device  # eager NCCL init: errors surface here, not mid-step
    dist.init_process_group(
        backend=topology.backend,
        rank=topology.rank,
        world_size=topology.world_size,
        timeout=timedelta(seconds=timeout_seconds),
        **kwargs,
    )
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # a broken group may refuse to die politely; we are exiting anyway
            dist.destroy_process_group()
