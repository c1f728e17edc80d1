"""A dead or silent peer ends the survivor within the timeout, with a message naming the peer and where it was.

On gloo a send or recv blocks until the transfer is done, so a lost peer shows up as an error at the exchange
(`PeerLostError`, parallel/exchange.py). On NCCL it does not: send and recv only enqueue work on the GPU and
return, so a survivor's host never sees its peer go; left alone, NCCL's own watchdog aborts the process after
the group timeout without saying which peer or where. And since the group timeout is also the longest any
collective may wait, a healthy job would die whenever rank 0 alone spent longer than it on a checkpoint commit
or a plot while its peer waited.

So liveness is judged apart from the collectives. `PeerWatchdog` is a daemon thread in every rank that
increments this rank's heartbeat counter in the rendezvous store (a TCPStore, the one torchrun or env:// set up)
every `interval` and reads every other rank's. A rank whose counter has not moved for `timeout_seconds` is lost:
the watchdog prints the message (which rank, the last exchange point this rank entered, `LastPoint`) and ends
the process with `WorkerExit.PEER_LOST`. The heartbeat runs on its own thread, so a rank busy for minutes in
rank-0-only work still beats; only a process that died or froze (SIGSTOP, a wedged host) goes silent. The
process group's own timeout is then only a backstop for a live peer that never joins (a deadlock),
`dist.collective_timeout_seconds` (parallel/process_group.py).

A rank that finishes cleanly marks itself done, so a peer still tearing down does not take its silence for a loss.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import torch.distributed as dist

from alexserve.contract.names import WorkerExit

KEY_PREFIX = "alexserve/liveness"
# Heartbeats per timeout: a lost peer is noticed at most timeout * (1 + 1/BEATS_PER_TIMEOUT) after its last beat.
BEATS_PER_TIMEOUT = 4
MAX_BEAT_SECONDS = 5.0


class LastPoint:
    """Where this rank last met its peer: set by the exchange before every transfer, and by the collectives
    between steps (the command boundary, the preemption barrier) before they start: a few attribute writes."""

    def __init__(self) -> None:
        self.point: str | None = None
        self.direction: str | None = None
        self.meeting: str | None = None  # a collective entered since the last exchange, e.g. a command boundary

    def set(self, point: str, direction: str) -> None:
        self.point, self.direction, self.meeting = point, direction, None

    def set_meeting(self, what: str) -> None:
        self.meeting = what

    def describe(self) -> str:
        if self.meeting is not None:
            return f"at {self.meeting}"
        if self.point is None:
            return "before the first exchange"
        return f"at exchange point '{self.point}' ({self.direction})"


def lost_peer_message(tower: int, rank: int, peer: int, where: str) -> str:
    return f"tower {tower} (rank {rank}) lost its peer, rank {peer}, {where}"


def exit_peer_lost(message: str) -> None:
    """The default on a lost peer: say so and end the process (no teardown: the group is broken)."""
    print(f"[alexserve rank {os.environ.get('RANK', '?')}] error: {message}", file=sys.stderr, flush=True)
    os._exit(WorkerExit.PEER_LOST)


def _store_client(timeout: timedelta) -> dist.Store:
    """A connection of its own to the rendezvous store, so a main thread blocked in the store never delays a beat."""
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if host and port:
        return dist.TCPStore(host, int(port), is_master=False, timeout=timeout, wait_for_workers=False)
    return dist.distributed_c10d._get_default_store()  # no TCP rendezvous: share the group's own store


class PeerWatchdog:
    """Heartbeats through the rendezvous store; calls `on_lost(message)` when another rank falls silent."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        timeout_seconds: float,
        store: dist.Store | None = None,
        on_lost: Callable[[str], None] = exit_peer_lost,
        key_prefix: str = KEY_PREFIX,
    ) -> None:
        self.rank, self.world_size, self.timeout = rank, world_size, timeout_seconds
        self.interval = min(timeout_seconds / BEATS_PER_TIMEOUT, MAX_BEAT_SECONDS)
        self.where = LastPoint()
        self.on_lost = on_lost
        self._store = store
        # A torchrun restart reuses the store: its attempts must not read each other's counters or done marks.
        self._prefix = f"{key_prefix}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _key(self, kind: str, rank: int) -> str:
        return f"{self._prefix}/{kind}/{rank}"

    def start(self) -> PeerWatchdog:
        if self._store is None:
            self._store = _store_client(timedelta(seconds=max(self.interval, 1.0)))
        self._store.add(self._key("beat", self.rank), 1)
        self._thread = threading.Thread(target=self._run, name="alexserve-peer-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self, finished: bool) -> None:
        """Ends the heartbeat; `finished`: this rank is done, so its silence from now on is no loss."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.interval + 1)
        if finished and self._store is not None:
            try:
                self._store.set(self._key("done", self.rank), "1")
            except Exception:  # noqa: BLE001 - the store may already be gone; the peers' own teardown follows
                pass

    def _silent_for(self, last_change: dict[int, float], last_value: dict[int, int], now: float) -> tuple[int, float]:
        """The longest-silent other rank and for how long, after reading every counter (ranks done are skipped)."""
        for rank in list(last_value):
            if self._store.check([self._key("done", rank)]):
                del last_value[rank], last_change[rank]
                continue
            value = self._store.add(self._key("beat", rank), 0)
            if value != last_value[rank]:
                last_value[rank], last_change[rank] = value, now
        if not last_change:
            return -1, 0.0
        rank = min(last_change, key=last_change.get)
        return rank, now - last_change[rank]

    def _run(self) -> None:
        others = [r for r in range(self.world_size) if r != self.rank]
        started = time.monotonic()
        last_change = dict.fromkeys(others, started)
        last_value = dict.fromkeys(others, -1)
        silent_rank, silent_for = -1, 0.0
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            try:
                self._store.add(self._key("beat", self.rank), 1)
                silent_rank, silent_for = self._silent_for(last_change, last_value, now)
            except Exception:  # noqa: BLE001 - the store does not answer: no news from anyone
                if last_change:
                    silent_rank = min(last_change, key=last_change.get)
                    silent_for = now - last_change[silent_rank]
            if silent_rank >= 0 and silent_for > self.timeout and not self._stop.is_set():
                self.on_lost(self._message(silent_rank, silent_for))
                return

    def _message(self, silent_rank: int, silent_for: float) -> str:
        why = f"(no heartbeat from it for {silent_for:.1f} s, timeout {self.timeout:g} s)"
        peer = self.rank ^ 1
        if silent_rank == peer:
            return f"{lost_peer_message(self.rank % 2, self.rank, peer, self.where.describe())} {why}"
        return (
            f"tower {self.rank % 2} (rank {self.rank}) lost rank {silent_rank} (tower {silent_rank % 2} of pair "
            f"{silent_rank // 2}); this rank was last {self.where.describe()} {why}"
        )
