"""The towers' exchange: activations forward, gradients backward, over send/recv.

At conv3, fc6, fc7 and fc8 (`TOWER_EXCHANGE_POINTS`) a tower needs the peer
tower's output of the layer below. `PeerExchange` swaps equal-shaped tensors with the peer rank.

Ordering. On NCCL the send and the receive are posted together (`batch_isend_irecv`, one NCCL group), so
both directions of the link run at once. On gloo the lower tower sends first and then receives, the upper
receives first and then sends: an order that cannot deadlock (gloo's `batch_isend_irecv` is reported to
hang, and a gloo send is buffered anyway, so a duplex would gain little on CPU).

No synchronisation. On NCCL the transfer is only enqueued: the host goes on and the GPU stream waits for
it. Its time is taken with CUDA events around it on the current stream, resolved only when the totals are
read (`ExchangeStats.take`, at a progress line), never by synchronising the device. On CPU it is the wall
clock around the blocking transfer (which includes waiting for the peer to reach the same point: that wait
is part of the exchange's cost).

Precision. Under autocast (`train.precision: bf16`) what is sent is in the autocast dtype, so the wire
carries half the bytes; with `train.channels_last` 4-d tensors travel in channels-last order (both towers
use the same layout, so the bytes mean the same on both sides).

`ExchangeFunction` makes the swap differentiable: forward returns the peer's
half, backward sends the gradient of the peer's half back to the peer and
receives the gradient of this tower's half from it. Autograd adds that to the
local path's gradient, so each tower gets the exact gradient of the whole net.

The loss needs all classes' logits. Each tower sends its fc8 share forward
(`LOSS_EXCHANGE_POINT`, "logits") and concatenates the peer's share *detached*: both ranks then
compute the same loss, and each backpropagates only into its own logits, which
is exactly its share of the full gradient (no double counting).

Before each transfer the exchange notes the point in `where` (parallel/watchdog.py's `LastPoint`), which is
what the peer watchdog names when the peer is lost.
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
from alexserve.parallel.watchdog import LastPoint, lost_peer_message

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

    CPU transfers add their wall-clock seconds at once; CUDA transfers leave a pair of events, resolved by
    `take()` (which waits for the last of them: call it only where the host reads anyway, at a progress line).
    """

    totals: dict[tuple[str, str], ExchangeTotals] = field(default_factory=lambda: defaultdict(ExchangeTotals))
    pending: list[tuple[str, str, torch.cuda.Event, torch.cuda.Event]] = field(default_factory=list)

    def add(self, point: str, direction: str, seconds: float, nbytes: int) -> None:
        entry = self.totals[(point, direction)]
        entry.seconds += seconds
        entry.bytes += nbytes
        entry.count += 1

    def add_events(
        self, point: str, direction: str, start: torch.cuda.Event, end: torch.cuda.Event, nbytes: int
    ) -> None:
        self.add(point, direction, 0.0, nbytes)
        self.pending.append((point, direction, start, end))

    def take(self) -> dict[tuple[str, str], ExchangeTotals]:
        """The totals so far, resetting them (on CUDA: waits for the transfers recorded since the last take)."""
        for point, direction, start, end in self.pending:
            end.synchronize()
            self.totals[(point, direction)].seconds += start.elapsed_time(end) / 1000.0
        taken = dict(self.totals)
        self.totals, self.pending = defaultdict(ExchangeTotals), []
        return taken


class PeerExchange:
    """Swaps tensors with the other tower of this pair.

    `where` is the peer watchdog's record of the last exchange point (`PeerWatchdog.where`); `channels_last`
    sends 4-d tensors in that layout (`train.channels_last`); `duplex` posts send and receive together (None:
    on NCCL, not on gloo; read from the group at the first exchange).
    """

    def __init__(
        self,
        rank: int,
        peer: int,
        tower: int,
        group=None,
        stats: ExchangeStats | None = None,
        where: LastPoint | None = None,
        channels_last: bool = False,
        duplex: bool | None = None,
    ):
        self.rank, self.peer, self.tower, self.group = rank, peer, tower, group
        self.stats = stats if stats is not None else ExchangeStats()
        self.where = where if where is not None else LastPoint()
        self.channels_last = channels_last
        self.duplex = duplex

    def _transfer(self, local: torch.Tensor, received: torch.Tensor) -> None:
        if self.duplex is None:
            self.duplex = dist.get_backend(self.group) == "nccl"
        if self.duplex:
            ops = [
                dist.P2POp(dist.isend, local, self.peer, self.group),
                dist.P2POp(dist.irecv, received, self.peer, self.group),
            ]
            for work in dist.batch_isend_irecv(ops):
                work.wait()  # on NCCL: the current stream waits for the transfer; the host does not
        elif self.tower == 0:
            dist.send(local, self.peer, group=self.group)
            dist.recv(received, self.peer, group=self.group)
        else:
            dist.recv(received, self.peer, group=self.group)
            dist.send(local, self.peer, group=self.group)

    def swap(
        self, point: str, direction: str, local: torch.Tensor, peer_shape: torch.Size | None = None
    ) -> torch.Tensor:
        shape = peer_shape if peer_shape is not None else local.shape
        # Channels-last travels as its NHWC view, which is contiguous (the backends send contiguous tensors only).
        nhwc = self.channels_last and len(shape) == 4
        if nhwc:
            local, shape = local.permute(0, 2, 3, 1), torch.Size((shape[0], shape[2], shape[3], shape[1]))
        local = local.contiguous()
        received = torch.empty(shape, dtype=local.dtype, device=local.device)
        self.where.set(point, direction)
        nbytes = local.numel() * local.element_size() + received.numel() * received.element_size()
        try:
            if local.is_cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                self._transfer(local, received)
                end.record()
                self.stats.add_events(point, direction, start, end, nbytes)
            else:
                began = time.perf_counter()
                self._transfer(local, received)
                self.stats.add(point, direction, time.perf_counter() - began, nbytes)
        except RuntimeError as err:  # gloo/NCCL errors (DistBackendError included) subclass RuntimeError
            where = f"at exchange point '{point}' ({direction})"
            raise PeerLostError(
                f"{lost_peer_message(self.tower, self.rank, self.peer, where)}: {first_line(err)}"
            ) from err
        return received.permute(0, 3, 1, 2) if nhwc else received

    @staticmethod
    def _in_autocast_dtype(local: torch.Tensor) -> torch.Tensor:
        """`local` in the autocast dtype when autocast is on (the exchange carries what the next layer computes in)."""
        kind = local.device.type
        if torch.is_autocast_enabled(kind) and local.is_floating_point():
            return local.to(torch.get_autocast_dtype(kind))
        return local

    def __call__(self, point: str, local: torch.Tensor) -> torch.Tensor:
        """The tower model's Exchange: both halves, concatenated in tower order, differentiable."""
        local = self._in_autocast_dtype(local)
        peer = ExchangeFunction.apply(local, self, point)
        return torch.cat([local, peer] if self.tower == 0 else [peer, local], dim=1)

    def full_logits(self, own: torch.Tensor, peer_classes: int) -> torch.Tensor:
        """All classes' logits; the peer's share is a constant here (see module docstring)."""
        own = self._in_autocast_dtype(own)
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
