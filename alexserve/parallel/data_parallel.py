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
DDP's all-reduces run on the "dp" group and the exchanges' send/recv on the
pair's two-rank "tower" group (`exchange_group`), so the two never share a
communicator: they run at the same time during backward, and NCCL is reported
to hang when collectives and point-to-point calls are issued concurrently on
one communicator (NVIDIA/nccl#1192). The peers passed to send/recv stay global
ranks (torch.distributed's `dst`/`src`/`peer` are global whatever the group).
DDP's broadcast of the weights at construction is a no-op in effect: every pair
builds (or restores) the same weights.

With one pair there is nothing to average, no mesh is built, the tower is used
as it is, and the exchange runs on the default group, which is then the pair.
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


def pair_mesh_if_several(topology: Topology, timeout_seconds: float) -> DeviceMesh | None:
    """The mesh with several pairs, None with one. Collective with several pairs: every rank calls it."""
    return None if topology.num_pairs == 1 else pair_mesh(topology, timeout_seconds)


def exchange_group(mesh: DeviceMesh | None) -> dist.ProcessGroup | None:
    """The group the pair's exchange runs on: this pair's two ranks, or the default group (None) with one pair."""
    return None if mesh is None else mesh["tower"].get_group()


def replicate_across_pairs(
    tower: torch.nn.Module, topology: Topology, timeout_seconds: float, mesh: DeviceMesh | None = None
) -> torch.nn.Module:
    """The module to train: `tower` in DDP over its data-parallel group, or `tower` itself with one pair.

    `mesh` is the one `pair_mesh_if_several` built (the exchange uses its tower group); without it one is built here.
    Collective with several pairs: every rank calls it at the same point.
    """
    if topology.num_pairs == 1:
        return tower
    mesh = mesh if mesh is not None else pair_mesh(topology, timeout_seconds)
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
