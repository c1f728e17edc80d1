"""The towers' exchange: activations forward, gradients backward, over send/recv.

At conv3, fc6, fc7 and fc8 (`TOWER_EXCHANGE_POINTS`) a tower needs the peer
tower's output of the layer below. `PeerExchange` swaps equal-shaped tensors with the peer rank. Ordering:
the lower tower sends first and then receives, the upper receives first and then
sends. That pairing never deadlocks whether send is buffered (gloo) or blocks
until matched (NCCL); `batch_isend_irecv` is avoided because it is reported to
hang on gloo. The price is half-duplex transfers, which at these sizes is small
next to the layers themselves.

`ExchangeFunction` makes the swap differentiable: forward returns the peer's
half, backward sends the gradient of the peer's half back to the peer and
receives the gradient of this tower's half from it. Autograd adds that to the
local path's gradient, so each tower gets the exact gradient of the whole net.

The loss needs all classes' logits. Each tower sends its fc8 share forward
(`LOSS_EXCHANGE_POINT`, "logits") and concatenates the peer's share *detached*: both ranks then
compute the same loss, and each backpropagates only into its own logits, which
is exactly its share of the full gradient (no double counting).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from alexserve.contract.names import EXCHANGE_DIRECTIONS, LOSS_EXCHANGE_POINT

FORWARD, BACKWARD = EXCHANGE_DIRECTIONS


class PeerLostError(RuntimeError):
    """The peer tower stopped answering (died, or silent past the timeout) during an exchange."""


def first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


@contextlib.contextmanager
def peers_required(rank: int, what: str) -> Iterator[None]:
    """Turns a collective's failure (a rank died or went silent past the timeout) into PeerLostError."""
    try:
        yield
    except PeerLostError:
        raise  # already says where
    except RuntimeError as err:  # gloo/NCCL errors (DistBackendError included) subclass RuntimeError
        raise PeerLostError(f"rank {rank} lost a peer during {what}: {first_line(err)}") from err


@dataclass
class ExchangeTotals:
    seconds: float = 0.0
    bytes: int = 0
    count: int = 0


@dataclass
class ExchangeStats:
    """Seconds and bytes moved per (point, direction), summed since the last `take()`.

    Times are wall-clock around the blocking transfer, so they include waiting
    for the peer to reach the same point (that wait is part of the exchange's cost).
    On CUDA the stream is synchronised around the transfer only when `timed` is set.
    """

    totals: dict[tuple[str, str], ExchangeTotals] = field(default_factory=lambda: defaultdict(ExchangeTotals))

    def add(self, point: str, direction: str, seconds: float, nbytes: int) -> None:
        entry = self.totals[(point, direction)]
        entry.seconds += seconds
        entry.bytes += nbytes
        entry.count += 1

    def take(self) -> dict[tuple[str, str], ExchangeTotals]:
        """The totals so far, resetting them."""
        taken = dict(self.totals)
        self.totals = defaultdict(ExchangeTotals)
        return taken


class PeerExchange:
    """Swaps tensors with the other tower of this pair."""

    def __init__(
        self, rank: int, peer: int, tower: int, group=None, stats: ExchangeStats | None = None, timed: bool = True
    ):
        self.rank, self.peer, self.tower, self.group = rank, peer, tower, group
        self.stats = stats if stats is not None else ExchangeStats()
        self.timed = timed

    def swap(
        self, point: str, direction: str, local: torch.Tensor, peer_shape: torch.Size | None = None
    ) -> torch.Tensor:
        local = local.contiguous()
        shape = peer_shape if peer_shape is not None else local.shape
        received = torch.empty(shape, dtype=local.dtype, device=local.device)
        sync = self.timed and local.is_cuda
        if sync:
            torch.cuda.synchronize(local.device)
        start = time.perf_counter()
        try:
            if self.tower == 0:
                dist.send(local, self.peer, group=self.group)
                dist.recv(received, self.peer, group=self.group)
            else:
                dist.recv(received, self.peer, group=self.group)
                dist.send(local, self.peer, group=self.group)
            if sync:
                torch.cuda.synchronize(local.device)
        except RuntimeError as err:  # gloo/NCCL errors (DistBackendError included) subclass RuntimeError
            raise PeerLostError(
                f"tower {self.tower} (rank {self.rank}) lost its peer, rank {self.peer}, "
                f"at exchange point '{point}' ({direction}): {first_line(err)}"
            ) from err
        nbytes = local.numel() * local.element_size() + received.numel() * received.element_size()
        self.stats.add(point, direction, time.perf_counter() - start, nbytes)
        return received

    def __call__(self, point: str, local: torch.Tensor) -> torch.Tensor:
        """The tower model's Exchange: both halves, concatenated in tower order, differentiable."""
        peer = ExchangeFunction.apply(local, self, point)
        return torch.cat([local, peer] if self.tower == 0 else [peer, local], dim=1)

    def full_logits(self, own: torch.Tensor, peer_classes: int) -> torch.Tensor:
        """All classes' logits; the peer's share is a constant here (see module docstring)."""
        peer = self.swap(LOSS_EXCHANGE_POINT, FORWARD, own.detach(), torch.Size((own.shape[0], peer_classes)))
        return torch.cat([own, peer] if self.tower == 0 else [peer, own], dim=1)


class ExchangeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor, exchange: PeerExchange, point: str) -> torch.Tensor:
        ctx.exchange, ctx.point = exchange, point
        return exchange.swap(point, FORWARD, local)

    @staticmethod
    def backward(ctx, grad_of_peer_half: torch.Tensor):
        grad_of_local_half = ctx.exchange.swap(ctx.point, BACKWARD, grad_of_peer_half)
        return grad_of_local_half, None, None
