"""Supervisor pieces in isolation: messages, SupervisorChannel, job store, spec validation, bind rules."""

from __future__ import annotations

import json
import time

import pytest
import zmq

from alexserve.checkpoint.naming import newest_committed_step
from alexserve.contract.supervisor_channel import SupervisorChannel
from alexserve.contract.worker_messages import (
    MAX_REPORT_BYTES,
    CheckpointEvent,
    ErrorEvent,
    EvalReport,
    Hello,
    MessageError,
    PauseCommand,
    StateEvent,
    StepReport,
    StopCommand,
    parse_command,
    parse_report,
)
from alexserve.supervisor.auth import AuthError, check_binds, is_loopback_host, read_token
from alexserve.supervisor.jobs import JobRecord, JobState, JobStore, tail_lines
from alexserve.supervisor.spec import SpecError, spec_from_tree

pytestmark = pytest.mark.timeout(60)


def step(**kw) -> StepReport:
    fields = dict(
        job_id="job-1", rank=1, pair=0, tower=1, epoch=0, step=3, steps=3, loss=2.0, learning_rate=0.01, images=24
    )
    fields.update(kw)
    return StepReport(**fields)


# ------------------------------------------------------------------ messages


@pytest.mark.parametrize(
    "message",
    [
        step(loss=float("nan"), step_seconds=[0.1] * 1024),
        EvalReport(job_id="job-1", epoch=1, center_top1_error=0.5, center_top5_error=0.2),
        CheckpointEvent(job_id="job-1", step=7),
        StateEvent(job_id="job-1", state="paused", step=7),
        ErrorEvent(job_id="job-1", message="x" * 10_000),
        Hello(job_id="job-1"),
    ],
)
def test_reports_round_trip(message):
    parsed = parse_report(message.to_bytes())
    assert type(parsed) is type(message)
    assert parsed.model_dump_json() == message.model_dump_json()


@pytest.mark.parametrize(
    "data, why",
    [
        (b"{", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"kind": "step"}', "job_id"),
        (b'{"kind": "state", "job_id": "j", "state": "dancing", "step": 1}', "state"),
        (b'{"kind": "state", "job_id": "j", "state": "paused", "step": "1"}', "step"),
        (b'{"kind": "checkpoint", "job_id": "j", "step": 1, "extra": 2}', "extra"),
        (
            b'{"kind": "eval", "job_id": "j", "epoch": 0, "center_top1_error": 1.5, "center_top5_error": 0}',
            "center_top1_error",
        ),
        (b'{"kind": "bogus"}', "bogus"),
        (b" " * (MAX_REPORT_BYTES + 1), "over the limit"),
    ],
)
def test_bad_reports_are_rejected_with_a_reason(data, why):
    with pytest.raises(MessageError, match=why):
        parse_report(data)


def test_commands_parse_and_reject():
    assert isinstance(parse_command(StopCommand(job_id="job-1", command_id=3).to_bytes()), StopCommand)
    with pytest.raises(MessageError):
        parse_command(StateEvent(job_id="job-1", state="paused", step=1).to_bytes())  # a report is not a command


# ------------------------------------------------------------------ SupervisorChannel


def test_link_is_none_without_a_supervisor(monkeypatch):
    monkeypatch.delenv("ALEXSERVE_JOB_ID", raising=False)
    monkeypatch.delenv("ALEXSERVE_REPORT_ADDR", raising=False)
    assert SupervisorChannel.from_env(0) is None


def test_link_never_blocks_and_drops_when_nobody_listens():
    link = SupervisorChannel("job-1", 1, "tcp://127.0.0.1:9", None)  # nothing listens on port 9
    started = time.monotonic()
    for _ in range(5000):
        link.send(step())
    assert time.monotonic() - started < 5
    assert link.dropped >= 5000 - 1000 - 10  # the queue holds about SEND_QUEUE_MESSAGES
    assert link.poll_command() is None  # rank 1 has no command socket
    started = time.monotonic()
    link.close(flush_seconds=0.2)
    assert time.monotonic() - started < 3


def test_link_reports_and_commands_round_trip(monkeypatch):
    ctx = zmq.Context.instance()
    pull, router = ctx.socket(zmq.PULL), ctx.socket(zmq.ROUTER)
    for s in (pull, router):
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, 5000)
    report_port = pull.bind_to_random_port("tcp://127.0.0.1")
    control_port = router.bind_to_random_port("tcp://127.0.0.1")
    monkeypatch.setenv("ALEXSERVE_JOB_ID", "job-1")
    monkeypatch.setenv("ALEXSERVE_REPORT_ADDR", f"tcp://127.0.0.1:{report_port}")
    monkeypatch.setenv("ALEXSERVE_CONTROL_ADDR", f"tcp://127.0.0.1:{control_port}")
    monkeypatch.setenv("ALEXSERVE_CHANNEL_SECRET", "0123456789abcdef")
    link = SupervisorChannel.from_env(0)
    try:
        identity, secret, hello = router.recv_multipart()  # every message travels behind the job's secret
        assert secret == b"0123456789abcdef" and parse_report(hello) == Hello(job_id="job-1", rank=0)
        router.send_multipart([identity, b"garbage"])
        router.send_multipart([identity, PauseCommand(job_id="job-2").to_bytes()])  # another job's: ignored
        router.send_multipart([identity, PauseCommand(job_id="job-1", command_id=5).to_bytes()])
        command = None
        deadline = time.monotonic() + 5
        while command is None and time.monotonic() < deadline:
            command = link.poll_command()
            time.sleep(0.01)
        assert command == PauseCommand(job_id="job-1", command_id=5)
        assert link.poll_command() is None
        link.send(StateEvent(job_id="job-1", state="paused", step=4))
        secret, report = pull.recv_multipart()
        assert secret == b"0123456789abcdef"
        assert parse_report(report) == StateEvent(job_id="job-1", state="paused", step=4)
    finally:
        link.close()
        pull.close()
        router.close()


# ------------------------------------------------------------------ job store


def test_store_round_trip_and_ids(tmp_path):
    store = JobStore(tmp_path)
    record = JobRecord(id="job-1", spec={"config": {}}, run_dir=str(tmp_path / "run"), max_restarts=2)
    store.save(record)
    record.state = JobState.COMPLETED
    store.save(record)
    (tmp_path / "jobs" / "job-1" / ".job.json.123.tmp").write_text("torn")  # a crash mid-write leaves only a temp file
    (tmp_path / "jobs" / "job-9").mkdir()
    (tmp_path / "jobs" / "job-9" / "job.json").write_text("{not json")
    records, problems = store.load_all()
    assert records["job-1"].state == JobState.COMPLETED and len(problems) == 1 and "job-9" in problems[0]
    assert store.next_id(records) == "job-10"  # never reuses a folder's id


def test_newest_checkpoint_needs_the_commit_marker(tmp_path):
    for step_, committed in ((10, True), (20, True), (30, False)):
        folder = tmp_path / f"step-{step_:09d}"
        folder.mkdir()
        if committed:
            (folder / "COMMITTED").write_text("{}")
    assert newest_committed_step(tmp_path) == 20
    assert newest_committed_step(tmp_path / "missing") is None


def test_tail_lines(tmp_path):
    path = tmp_path / "log"
    path.write_text("".join(f"line {i}\n" for i in range(1000)))
    assert tail_lines(path, 3) == "line 997\nline 998\nline 999\n"
    assert tail_lines(tmp_path / "none", 3) == ""


# ------------------------------------------------------------------ spec


def test_spec_names_every_bad_field():
    with pytest.raises(SpecError) as err:
        spec_from_tree(
            {
                "max_restarts": "many",
                "name": "bad name!",
                "typo": 1,
                "config": {"train": {"batch_size": -1}, "optim": {"momentum": 2}},
            },
            "job.yaml",
        )
    text = str(err.value)
    assert text.startswith("job.yaml: ")
    for field in ("max_restarts", "name", "typo", "config.train.batch_size", "config.optim.momentum"):
        assert field in text, field
    with pytest.raises(SpecError, match="config"):
        spec_from_tree({}, "empty.yaml")  # the training config is required


def test_spec_overrides():
    spec = spec_from_tree({"config": {}}, "s", ["config.train.max_steps=7", "max_restarts=0"])
    assert spec.config.train.max_steps == 7 and spec.max_restarts == 0


# ------------------------------------------------------------------ auth


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("*", False),
        ("", False),
        ("10.1.2.3", False),
    ],
)
def test_loopback_detection(host, loopback):
    assert is_loopback_host(host) is loopback


def test_bind_rules_and_tokens(tmp_path):
    check_binds("tcp://127.0.0.1:7355", "127.0.0.1", None)
    check_binds("ipc:///tmp/x.sock", "localhost", None)
    with pytest.raises(AuthError, match="refusing"):
        check_binds("tcp://*:7355", "127.0.0.1", None)
    with pytest.raises(AuthError, match="metrics"):
        check_binds("tcp://127.0.0.1:7355", "0.0.0.0", None)
    check_binds("tcp://0.0.0.0:7355", "0.0.0.0", "0123456789abcdef")
    token_file = tmp_path / "token"
    token_file.write_text("short\n")
    with pytest.raises(AuthError, match="at least"):
        read_token(token_file)
    token_file.write_text("0123456789abcdef\n")
    assert read_token(token_file) == "0123456789abcdef"
    assert read_token(None, {"ALEXSERVE_TOKEN": "fedcba9876543210"}) == "fedcba9876543210"
    assert read_token(None, {}) is None
    assert json.dumps(read_token(None, {})) == "null"
