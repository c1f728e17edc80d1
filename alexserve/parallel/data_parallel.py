"""Data parallel across tower pairs: tower t's gradients averaged over tower t of every pair.

Ranks form a grid of pairs x towers (topology.py), named once as a device mesh
with dimensions ("dp", "tower"): rank r sits at (r // 2, r % 2). Each pair is
model-parallel exactly as with one pair; the pairs read disjoint shards of each
epoch. After backward, tower t must hold the mean gradient of tower t over all
pairs, which is what one pair would compute on the concatenated batch (the loss
is a mean).

`replicate_across_pairs` wraps the tower in `DistributedDataParallel` on its
"dp" group: DDP all-reduces gradient buckets as they fill during backward, so
the averaging overlaps the rest of backward (the exchanges included), and
`backward()` returns with every gradient averaged, before the optimizer runs.
Its collectives run on the "dp" group while the exchanges' send/recv run on the
default group; gloo keeps separate connections per group, so neither waits on
the other. DDP's broadcast of the weights at construction is a no-op in effect:
every pair builds (or restores) the same weights.

With one pair there is nothing to average and the tower is used as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.nn.parallel import DistributedDataParallel

from alexserve.parallel.exchange import PeerLostError, first_line
from alexserve.parallel.topology import Topology

MESH_DIMS = ("dp", "tower")


def pair_mesh(topology: Topology, timeout_seconds: float) -> DeviceMesh:
    """The (pairs x towers) mesh. Collective: every rank calls it.

    The mesh's groups get the job's collective timeout, the deadlock backstop (process_group.py); a dead or frozen
    rank is caught sooner by the peer watchdog (watchdog.py).
    """
    options = _group_options(topology.backend, timedelta(seconds=timeout_seconds))
    return init_device_mesh(
        topology.device.type,
        (topology.num_pairs, 2),
        mesh_dim_names=MESH_DIMS,
        backend_override={dim: (topology.backend, options) for dim in MESH_DIMS},
    )


def _group_options(backend: str, timeout: timedelta):
    if backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout  # how a mesh's NCCL groups take a timeout (DeviceMesh reads this field)
        return options
    return dist.ProcessGroupGloo.Options(backend, timeout)


def replicate_across_pairs(tower: torch.nn.Module, topology: Topology, timeout_seconds: float) -> torch.nn.Module:
    """The module to train: `tower` in DDP over its data-parallel group, or `tower` itself with one pair.

    Collective with several pairs: every rank calls it at the same point.
    """
    if topology.num_pairs == 1:
        return tower
    mesh = pair_mesh(topology, timeout_seconds)
    return DistributedDataParallel(tower, device_mesh=mesh["dp"])


def tower_of(model: torch.nn.Module) -> torch.nn.Module:
    """The tower inside what `replicate_across_pairs` returned."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync_failures(model: torch.nn.Module, rank: int) -> Iterator[None]:
    """Around a DDP step: a failed collective of the data-parallel group becomes PeerLostError.

    The block also computes, so only backend failures are converted (a gloo error is a plain RuntimeError that
    names gloo; NCCL's are DistError); a PeerLostError from an exchange, and any other error, pass unchanged.
    """
    if not isinstance(model, DistributedDataParallel):
        yield
        return
    try:
        yield
    except PeerLostError:
        raise
    except RuntimeError as err:
        if not (isinstance(err, dist.DistError) or "gloo" in str(err)):
            raise
        raise PeerLostError(
            f"rank {rank} lost a peer during the data-parallel gradient all-reduce: {first_line(err)}"
        ) from err
