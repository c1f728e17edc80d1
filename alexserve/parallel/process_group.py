"""Process-group lifetime: always an explicit timeout, a peer watchdog, always torn down.

Two limits (README, "A dead peer"):

- `timeout_seconds` (`dist.timeout_seconds`) is how long a peer may stay silent: a rank that died or froze is
  declared lost after it, by the heartbeat of `PeerWatchdog` (parallel/watchdog.py), on NCCL as on gloo.
- `collective_timeout_seconds` (`dist.collective_timeout_seconds`) is the process group's own timeout: the
  longest a collective or an exchange may wait for a peer that is alive. It is a backstop for a deadlock, long
  enough that rank 0 alone may spend minutes on a checkpoint commit or a plot while its peer waits.

On NCCL, `TORCH_NCCL_ASYNC_ERROR_HANDLING` is set to 2 where it is unset, before the group exists (torch reads it
when a group is made): torch then only aborts the communicators on an NCCL error, and the worker, not a SIGABRT,
ends the process (contract/nccl_errors.py). A value already set is kept, and the primary rank says what it means.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

from alexserve.contract.nccl_errors import error_handling_notice, set_default_error_handling
from alexserve.parallel.topology import Topology
from alexserve.parallel.watchdog import PeerWatchdog, exit_peer_lost

# The default backstop: a collective still waiting for a live peer after this long is a deadlock.
DEFAULT_COLLECTIVE_TIMEOUT_SECONDS = 1800.0


@contextlib.contextmanager
def process_group(
    topology: Topology,
    timeout_seconds: float,
    collective_timeout_seconds: float | None = None,
    on_peer_lost=exit_peer_lost,
) -> Iterator[PeerWatchdog]:
    """Joins the job's process group (torchrun's env:// rendezvous) for the `with` block; yields its watchdog.

    The watchdog's `where` is what the exchange updates (PeerExchange(..., where=watchdog.where)), so a lost
    peer is reported at the last exchange point this rank entered.
    """
    if collective_timeout_seconds is None:
        collective_timeout_seconds = max(timeout_seconds, DEFAULT_COLLECTIVE_TIMEOUT_SECONDS)
    if topology.backend == "nccl":
        prepare_nccl_error_handling(topology.is_primary)
    kwargs = {}
    if topology.device.type == "cuda":
        torch.cuda.set_device(topology.device)
        kwargs["device_id"] = topology.device  # eager NCCL init: errors surface here, not mid-step
    dist.init_process_group(
        backend=topology.backend,
        rank=topology.rank,
        world_size=topology.world_size,
        timeout=timedelta(seconds=collective_timeout_seconds),
        **kwargs,
    )
    watchdog = PeerWatchdog(topology.rank, topology.world_size, timeout_seconds, on_lost=on_peer_lost)
    finished = False
    try:
        watchdog.start()
        yield watchdog
        finished = True
    finally:
        watchdog.stop(finished)
        with contextlib.suppress(Exception):  # a broken group may refuse to die politely; we are exiting anyway
            dist.destroy_process_group()


def prepare_nccl_error_handling(is_primary: bool) -> None:
    """Before an NCCL group: alexserve's error handling where none is set; a note on a value set otherwise."""
    set_default_error_handling()
    notice = error_handling_notice()
    if notice and is_primary:
        print(f"note: {notice}", file=sys.stderr, flush=True)
