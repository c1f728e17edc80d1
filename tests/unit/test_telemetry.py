"""Telemetry and commands: the do-nothing defaults cost nothing, and the supervisor sink sends the right messages."""

from __future__ import annotations

import math

import pytest
import torch
import zmq

from alexserve.contract.supervisor_channel import SupervisorChannel
from alexserve.contract.telemetry import (
    CommandSource,
    EvalSummary,
    ExchangeTime,
    IntervalSummary,
    NoCommands,
    NullTelemetry,
    SupervisorTelemetry,
    TelemetrySink,
)
from alexserve.contract.worker_messages import (
    COMMAND_KINDS,
    CheckpointEvent,
    ErrorEvent,
    EvalReport,
    ExchangeTiming,
    StateEvent,
    StepReport,
    parse_command,
    parse_report,
)
from alexserve.parallel.exchange import ExchangeTotals
from alexserve.train.control import Action, CommandSync
from alexserve.train.evaluation import EvalResult
from alexserve.train.progress import IntervalMeter
from alexserve.train.reporting import eval_summary, interval_summary

INTERVAL = IntervalSummary(
    epoch=2,
    global_step=40,
    steps=8,
    images=256,
    loss=1.5,
    learning_rate=0.01,
    step_seconds=[0.1, 0.2, math.inf],
    data_wait_seconds=0.05,
    exchange=[ExchangeTime("fc6", "backward", 0.01, 4096)],
    memory_bytes=123,
)
EVAL = EvalSummary(epoch=2, global_step=40, center_top1_error=0.5, center_top5_error=0.2)


def every_call(sink: TelemetrySink) -> None:
    sink.interval(INTERVAL)
    sink.evaluation(EVAL)
    sink.checkpoint(40)
    sink.state("paused", 40)
    sink.error("rank 1 lost its peer", "error")


def test_the_null_defaults_accept_everything_and_say_nothing():
    every_call(NullTelemetry())
    source: CommandSource = NoCommands()
    assert source.poll_command() is None


def test_without_a_command_source_no_rank_waits_for_a_broadcast():
    # No process group exists here: a broadcast would raise, so NONE proves none was attempted.
    sync = CommandSync(is_primary=True)
    assert [sync.next_action(step) for step in range(3)] == [Action.NONE] * 3
    assert CommandSync(False, NoCommands()).next_action(0) == Action.NONE


class _OneCommand:
    def __init__(self) -> None:
        self.polls = 0

    def poll_command(self):
        self.polls += 1
        return None


def test_commands_are_shared_only_every_few_steps():
    # Between polls no rank meets a broadcast (none exists here: it would raise) and the source is not asked.
    source = _OneCommand()
    sync = CommandSync(is_primary=True, source=source, every_steps=4)
    assert [sync.next_action(step) for step in (1, 2, 3, 5, 6, 7)] == [Action.NONE] * 6
    assert source.polls == 0


@pytest.fixture
def pull_socket():
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.setsockopt(zmq.RCVTIMEO, 5000)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    yield pull, f"tcp://127.0.0.1:{port}"
    pull.close()


def test_the_supervisor_sink_sends_one_message_per_call(pull_socket):
    pull, address = pull_socket
    with SupervisorChannel("job-7", 3, address, None) as channel:
        every_call(SupervisorTelemetry(channel, pair=1, tower=1))
        received = [parse_report(pull.recv_multipart()[-1]) for _ in range(5)]  # [secret, report]
    step, evaluation, checkpoint, state, error = received
    assert step == StepReport(
        job_id="job-7",
        rank=3,
        pair=1,
        tower=1,
        epoch=2,
        step=40,
        steps=8,
        loss=1.5,
        learning_rate=0.01,
        images=256,
        step_seconds=[0.1, 0.2],
        data_wait_seconds=0.05,
        device_memory_bytes=123,
        exchange=[ExchangeTiming(point="fc6", direction="backward", seconds=0.01, bytes=4096)],
    )
    assert evaluation == EvalReport(
        job_id="job-7",
        rank=3,
        epoch=2,
        step=40,
        center_top1_error=0.5,
        center_top5_error=0.2,
        ten_crop_top1_error=None,
        ten_crop_top5_error=None,
    )
    assert isinstance(checkpoint, CheckpointEvent) and (checkpoint.job_id, checkpoint.step) == ("job-7", 40)
    assert state == StateEvent(job_id="job-7", rank=3, state="paused", step=40)
    assert error == ErrorEvent(job_id="job-7", rank=3, message="rank 1 lost its peer", reason="error")


def test_training_counters_become_plain_summaries():
    meter = IntervalMeter()
    meter.add_step(loss=2.0, top1_errors=3, images=4, seconds=0.5)
    meter.add_step(loss=1.0, top1_errors=1, images=4, seconds=0.25)
    meter.data_wait_seconds = 0.1
    exchanged = {("conv3", "forward"): ExchangeTotals(0.3, 1000, 2)}
    summary = interval_summary(
        meter, epoch=0, global_step=2, learning_rate=0.02, exchanged=exchanged, device=torch.device("cpu")
    )
    assert (summary.steps, summary.images, summary.loss, summary.step_seconds) == (2, 8, 1.5, [0.5, 0.25])
    assert summary.exchange == [ExchangeTime("conv3", "forward", 0.3, 1000)]
    assert summary.memory_bytes > 10_000_000  # this process's resident memory: torch alone is more

    center = EvalResult("center", 0.25, 0.125, 8)
    assert eval_summary(1, 9, {"center": center}) == EvalSummary(1, 9, 0.25, 0.125, None, None)
    ten = EvalResult("ten_crop", 0.2, 0.1, 8)
    assert eval_summary(1, 9, {"center": center, "ten_crop": ten}).ten_crop_top5_error == 0.1


def test_every_command_kind_of_the_contract_is_one_action_with_the_same_name():
    """The actions come from the contract's one list of kinds: every parsable command maps, nothing else exists."""
    from alexserve.train.control import _BY_KIND, Action

    assert COMMAND_KINDS == ("pause", "resume", "stop", "checkpoint_now")
    assert [a.name for a in Action] == ["NONE", "PAUSE", "RESUME", "STOP", "CHECKPOINT_NOW"]
    assert [int(a) for a in Action] == list(range(len(COMMAND_KINDS) + 1))  # the wire value of the all-reduce
    for kind in COMMAND_KINDS:
        command = parse_command(f'{{"kind": "{kind}", "job_id": "j1"}}'.encode())
        assert _BY_KIND[command.kind].name == kind.upper()


def test_a_peer_lost_in_a_command_boundary_is_reported_at_that_boundary(tmp_path, monkeypatch):
    """The watchdog's record names the boundary (and its step) once this rank enters it, and an exchange after it
    names the exchange again: the survivor's message says where it really waited."""
    import torch.distributed as dist

    from alexserve.parallel.watchdog import LastPoint
    from alexserve.train.control import CommandSync
    from alexserve.train.preemption import PreemptionFlag

    where = LastPoint()
    where.set("fc8", "backward")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        sync = CommandSync(True, every_steps=2, preemption=PreemptionFlag(["SIGUSR1"]), where=where)
        assert sync.next_action(3) == Action.NONE  # between boundaries: nothing met, the record stays
        assert where.describe() == "at exchange point 'fc8' (backward)"
        assert sync.next_action(4) == Action.NONE
        assert where.describe() == "at the command boundary before step 4"
        where.set("conv3", "forward")
        assert where.describe() == "at exchange point 'conv3' (forward)"
    finally:
        dist.destroy_process_group()
