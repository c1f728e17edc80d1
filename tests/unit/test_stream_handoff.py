"""Issue 24, item 6: on a GPU the loader makes batches on a side stream and the consumer waits for an event.

No GPU here: torch.cuda's Stream, Event, stream, current_stream and set_device are replaced by a fake that keeps a
per-thread current stream (as CUDA's is) and logs every call with the thread that made it. The tests check the
calls each side makes and their order: the producer's copies and its event record on the side stream, the
consumer's `wait_event` on that event before it uses the batch, and `record_stream` on every tensor.
"""

from __future__ import annotations

import threading
from collections import deque

import pytest
import torch

from alexserve.data.dali_loader import InOrderPipeline
from alexserve.data.prefetch import PrefetchSlot
from alexserve.data.stream_handoff import handoff_for

GPU1 = torch.device("cuda", 1)
PRODUCER = "alexserve-prefetch"


class FakeCuda:
    def __init__(self):
        self.log: list[tuple] = []
        self._current = threading.local()
        self._events = 0
        self.default = FakeStream("default", self)

    def note(self, *entry) -> None:
        self.log.append((threading.current_thread().name, *entry))

    def current(self) -> FakeStream:
        return getattr(self._current, "stream", self.default)

    # the torch.cuda names the code under test calls
    def Stream(self, device=None):  # noqa: N802 - torch's name
        self.note("Stream", device)
        return FakeStream("side", self)

    def Event(self):  # noqa: N802 - torch's name
        self._events += 1
        return FakeEvent(self._events - 1, self)

    def stream(self, stream):
        cuda = self

        class Context:
            def __enter__(self):
                self.prev = cuda.current()
                cuda._current.stream = stream
                cuda.note("enter", stream.name)

            def __exit__(self, *exc):
                cuda._current.stream = self.prev
                cuda.note("exit", stream.name)

        return Context()

    def current_stream(self, device=None):
        return self.current()

    def set_device(self, device):
        self.note("set_device", device)

    def producer_calls(self) -> list[tuple]:
        return [entry[1:] for entry in self.log if entry[0] == PRODUCER]

    def consumer_calls(self) -> list[tuple]:
        return [entry[1:] for entry in self.log if entry[0] != PRODUCER]


class FakeStream:
    def __init__(self, name: str, cuda: FakeCuda):
        self.name, self.cuda = name, cuda

    def wait_event(self, event) -> None:
        self.cuda.note("wait_event", self.name, event.index)


class FakeEvent:
    def __init__(self, index: int, cuda: FakeCuda):
        self.index, self.cuda = index, cuda

    def record(self, stream=None) -> None:
        self.cuda.note("record", self.index, stream.name)


class FakeTensor:
    is_cuda = True

    def __init__(self, name: str, cuda: FakeCuda):
        self.name, self.cuda = name, cuda

    def record_stream(self, stream) -> None:
        self.cuda.note("record_stream", self.name, stream.name)


@pytest.fixture
def cuda(monkeypatch) -> FakeCuda:
    fake = FakeCuda()
    for name in ("Stream", "Event", "stream", "current_stream", "set_device"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    return fake


def batches(cuda: FakeCuda, n: int):
    """A loader's producer: each batch 'copied' on whatever stream is current on the loader thread."""
    for k in range(n):
        cuda.note("copy", k, cuda.current().name)
        yield FakeTensor(f"images{k}", cuda), FakeTensor(f"labels{k}", cuda)


def test_producer_copies_and_records_on_the_side_stream_and_the_consumer_waits_before_use(cuda):
    slot = PrefetchSlot(2, GPU1)
    for k, (images, labels) in enumerate(slot.start(batches(cuda, 3))):
        assert (images.name, labels.name) == (f"images{k}", f"labels{k}")
        cuda.note("use", k, cuda.current().name)
    slot.stop()

    per_batch = [[("enter", "side"), ("copy", k, "side"), ("record", k, "side"), ("exit", "side")] for k in range(3)]
    assert cuda.producer_calls() == [
        ("set_device", GPU1),  # before the stream context, which restores the device current on entry
        ("Stream", GPU1),
        *[call for batch in per_batch for call in batch],
        ("enter", "side"),  # the attempt that finds the producer spent
        ("exit", "side"),
    ]
    assert cuda.consumer_calls() == [
        call
        for k in range(3)
        for call in (
            ("wait_event", "default", k),
            ("record_stream", f"images{k}", "default"),
            ("record_stream", f"labels{k}", "default"),
            ("use", k, "default"),
        )
    ]


def test_the_event_each_batch_waits_for_is_recorded_after_that_batchs_copy(cuda):
    """Across the two threads: batch k's wait names the event recorded right after batch k's copy."""
    slot = PrefetchSlot(1, GPU1)
    for k, _ in enumerate(slot.start(batches(cuda, 4))):
        cuda.note("use", k, cuda.current().name)
    slot.stop()
    log = [entry[1:] for entry in cuda.log]
    for k in range(4):
        copied, recorded = log.index(("copy", k, "side")), log.index(("record", k, "side"))
        waited, used = log.index(("wait_event", "default", k)), log.index(("use", k, "default"))
        assert copied < recorded < waited < used


def test_an_abandoned_epoch_closes_the_producer_on_the_loader_thread(cuda):
    closed_on = []

    def produce():
        try:
            yield from batches(cuda, 100)
        finally:
            closed_on.append(threading.current_thread().name)

    slot = PrefetchSlot(2, GPU1)
    next(slot.start(produce()))
    slot.stop()
    assert closed_on == [PRODUCER]


def test_the_dali_pass_binds_its_outputs_to_the_side_stream(cuda):
    """`InOrderPipeline` asks DALI for its outputs on the loader thread's current stream: the side stream."""
    pipes = []

    class FakePipe:
        def __init__(self, source):
            self.source, self.ready, self.streams = source, deque(), []
            pipes.append(self)

        def build(self):
            pass

        def schedule_run(self):
            try:
                self.ready.append(self.source())
            except StopIteration:
                pass

        def outputs(self, stream):
            self.streams.append(stream.name)
            if not self.ready:
                raise StopIteration
            return (self.ready.popleft(),)

        def reset(self):
            pass

    pipeline = InOrderPipeline(FakePipe, GPU1)
    slot = PrefetchSlot(2, GPU1)
    inputs = ((k, (FakeTensor(f"images{k}", cuda),)) for k in range(3))
    got = [meta for _output, meta in slot.start(pipeline.passes(inputs))]
    slot.stop()
    assert got == [0, 1, 2]
    assert pipes[0].streams == ["side"] * 4  # three batches, then the StopIteration


def test_the_cpu_has_no_handoff_and_makes_no_cuda_call(cuda):
    assert handoff_for(torch.device("cpu")) is None and handoff_for(None) is None
    slot = PrefetchSlot(2, torch.device("cpu"))
    assert [k for k, _ in enumerate(slot.start(iter([torch.zeros(1), torch.ones(1)])))] == [0, 1]
    slot.stop()
    assert cuda.log == []
