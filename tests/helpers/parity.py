"""The small model and batch shared by the parity tests and their rank processes, and the parity comparison."""

from __future__ import annotations

import torch

# The parity net, batch and seed are the library's own (`alexserve doctor` checks a new host with them): odd class
# count (tower 0 holds one class more), a fixed-std init with every bias 1 (He's fc8 starts at 0 and would leave
# every gradient below fc8 zero at the first step) and a pixel std of 2, so the input division is exercised too.
from alexserve.doctor.pair_rank import PARITY_SEED as SEED
from alexserve.doctor.pair_rank import parity_batch as make_batch  # noqa: F401 (the tests import it from here)
from alexserve.doctor.pair_rank import parity_model_config
from alexserve.model import AlexNetTower
from alexserve.parallel.exchange import PeerExchange
from alexserve.parallel.topology import Topology
from helpers.tensors import context

DROPOUT_SEED = 12345

# Float64 throughout, so the only differences are summation order: 1e-5 relative is far above that noise (about
# 1e-13) and far below any real mistake (a missing half, a swapped tower order, a doubled gradient are all O(1)
# relative).
RTOL = 1e-5


def parity_tower(topology: Topology) -> tuple[AlexNetTower, PeerExchange]:
    """This rank's float64 tower of the parity model, initialised as the grouped reference, and its exchange."""
    tower = AlexNetTower(parity_model_config(), topology.tower)
    tower.reset_parameters(SEED)
    return tower.double(), PeerExchange(topology.rank, topology.peer, topology.tower)


def assert_matches_reference(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Every element within RTOL of the largest magnitude in `expected` (max |a - e| / max |e| <= RTOL)."""
    scale = float(expected.abs().max().clamp_min(1e-12))
    reason = f"{what} differs from the single-process reference (tolerance {RTOL} x max|expected| = {RTOL * scale:.3e})"
    torch.testing.assert_close(actual, expected, rtol=0, atol=RTOL * scale, msg=context(reason))
