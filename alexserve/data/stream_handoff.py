"""Hand a batch made on the loader thread's CUDA side stream to the training stream, ordered by an event.

Without this the loader thread's work (DALI's outputs, their copy into torch memory, the label copies) runs on
that thread's current stream, which is the device's default stream: the one the training step runs on. A step's
kernels then queue behind the next batches' copies. With it, on a CUDA device:

- the loader thread sets its device first, then makes each batch under `torch.cuda.stream(side)`, so every copy
  and allocation of the batch is queued on the side stream, and records an event on the side stream after it;
- the consumer makes its current stream `wait_event` that event (a device-side wait: the host does not block)
  and calls `record_stream` on every tensor of the batch, so the caching allocator does not hand the batch's
  memory back to the side stream while the training stream may still read it (torch.Tensor.record_stream).

On the CPU there are no streams and `handoff_for` gives None: batches pass unchanged.

The device is set before the stream context is entered because `torch.cuda.stream` restores, on exit, the stream
(and with it the device) that was current on entry: entered before the device is set, it would put the thread
back on GPU 0 after the first batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from alexserve.devices import indexed, use_device_in_this_thread


def _cuda_tensors(batch: Any) -> Iterator[torch.Tensor]:
    """The CUDA tensors of a batch: a tensor, or a (nested) tuple or list of them; other parts are skipped."""
    if isinstance(batch, (tuple, list)):
        for part in batch:
            yield from _cuda_tensors(part)
    elif getattr(batch, "is_cuda", False):
        yield batch


class StreamHandoff:
    """One source's side stream on `device`: `produced` runs on the loader thread, `received` on the consumer's."""

    def __init__(self, device: torch.device):
        self.device = indexed(device)
        self._side = None  # made on the loader thread, on first use, after the device is set

    def produced(self, items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        """(batch, event) for every batch of `items`, each made on the side stream; the event follows its copies."""
        use_device_in_this_thread(self.device)
        if self._side is None:
            self._side = torch.cuda.Stream(device=self.device)
        side, it = self._side, iter(items)
        try:
            while True:
                with torch.cuda.stream(side):
                    try:
                        batch = next(it)
                    except StopIteration:
                        return
                    event = torch.cuda.Event()
                    event.record(side)
                yield batch, event
        finally:
            close = getattr(it, "close", None)  # a pass abandoned midway cleans up on this thread (prefetch.py)
            if close is not None:
                close()

    def received(self, item: tuple[Any, Any]) -> Any:
        """The batch, safe to use on the consumer's current stream; nothing waits on the host."""
        batch, event = item
        stream = torch.cuda.current_stream(self.device)
        stream.wait_event(event)
        for tensor in _cuda_tensors(batch):
            tensor.record_stream(stream)
        return batch


def handoff_for(device: torch.device | None) -> StreamHandoff | None:
    """A handoff for a CUDA device; None (batches unchanged) for the CPU."""
    if device is None or torch.device(device).type != "cuda":
        return None
    return StreamHandoff(torch.device(device))
