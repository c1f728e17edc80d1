"""Run a batch producer on a background thread, a few batches ahead, and time how long the consumer waits.

This is the paper's "augmentation is computationally free": the next batches are
decoded and augmented while the current one trains. DALI's operators and PIL's
decoder release the GIL, so a thread overlaps them with the training step. A producer
that needs per-thread state (the CUDA device) sets it in its own body: it runs on
this thread from start to cleanup. On a CUDA device the batches are made on a side
stream and handed to the consumer's stream with an event (`stream_handoff.py`), so the
training stream never queues behind the loader's copies.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from alexserve.data.stream_handoff import StreamHandoff, handoff_for

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(
    items: Iterable[Any], depth: int, on_wait: Callable[[float], None], handoff: StreamHandoff | None = None
) -> Iterator[Any]:
    """Yield `items` (produced on a thread, up to `depth` ahead); `on_wait(seconds)` after every blocking get.

    Closing the returned generator early (break, exception, garbage collection) stops the
    thread before returning, so the producer (a DALI pipeline, say) can be reused at once.
    With a `handoff` the items are made on its side stream and each is received on the consumer's stream.
    """
    if handoff is not None:
        items = handoff.produced(items)  # iterated, and closed, on the thread below
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(_Failure(err))
        finally:
            # A generator's cleanup (a DALI pass abandoned midway) runs here, on the thread that ran it
            # (the one whose CUDA device is set), not later on whichever thread collects it.
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, name="alexserve-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            t0 = time.perf_counter()
            item = q.get()
            on_wait(time.perf_counter() - t0)
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item if handoff is None else handoff.received(item)
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


class PrefetchSlot:
    """A source's one in-flight prefetching iterator, and the seconds its consumer has waited.

    Starting a new iteration ends the previous one's thread first: a source serves
    one epoch (or one evaluation pass) at a time. `device` is where the batches land:
    a CUDA device gets a side stream (`stream_handoff.py`), the CPU none.
    """

    def __init__(self, depth: int, device=None):
        self.depth = depth
        self._handoff = handoff_for(device)
        self.wait_seconds_total = 0.0
        self._active: Iterator[Any] | None = None

    def _add_wait(self, seconds: float) -> None:
        self.wait_seconds_total += seconds

    def start(self, items: Iterable[Any]) -> Iterator[Any]:
        self.stop()
        self._active = prefetch(items, self.depth, self._add_wait, self._handoff)
        return self._active

    def stop(self) -> None:
        if self._active is not None:
            self._active.close()
            self._active = None
