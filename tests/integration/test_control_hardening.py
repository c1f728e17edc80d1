"""The control socket under abuse: every malformed request gets an error reply and the supervisor stays up.

Also: tokens (non-loopback binds refused without one, requests without it
refused), the client's clear failure when no supervisor runs, invalid specs
rejected with every bad field named and nothing launched.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alexserve.supervisor.control_messages import MAX_REQUEST_BYTES, SOCKET_MAX_MESSAGE_BYTES
from helpers.supervisor import cleanup, free_port, start_supervisor, supervisor_env

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def supervisor(tmp_path_factory):
    """One supervisor for the whole module: abuse must not wear it down from one test to the next."""
    sup = start_supervisor(tmp_path_factory.mktemp("control") / "state")
    try:
        yield sup
    finally:
        assert sup.proc.poll() is None, f"the supervisor died:\n{sup.log()}"
        cleanup(sup)


def raw_request(address: str, frames: list[bytes], timeout: float = 5.0) -> dict | None:
    """Sends raw frames on a REQ socket; the decoded reply, or None when none came."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    try:
        sock.connect(address)
        sock.send_multipart(frames)
        return json.loads(sock.recv())
    except zmq.Again:
        return None
    finally:
        sock.close(linger=0)


def assert_alive(address: str) -> None:
    reply = raw_request(address, [b'{"verb": "ping"}'])
    assert reply is not None and reply["ok"], f"supervisor stopped answering: {reply}"


MALFORMED = {
    "not JSON": b"\x00\xff not json {",
    "empty": b"",
    "JSON but not an object": b"[1, 2, 3]",
    "a bare string": b'"submit"',
    "no verb": b"{}",
    "verb not a string": b'{"verb": 7}',
    "unknown verb": b'{"verb": "format_disk"}',
    "job_id wrong type": b'{"verb": "status", "job_id": 12}',
    "job_id with a path": b'{"verb": "status", "job_id": "../../etc"}',
    "lines wrong type": b'{"verb": "logs", "job_id": "job-1", "lines": "all"}',
    "lines a bool": b'{"verb": "logs", "job_id": "job-1", "lines": true}',
    "extra field": b'{"verb": "list", "sudo": true}',
    "spec not an object": b'{"verb": "submit", "spec": [1]}',
    "deep nesting": b'{"verb": "submit", "spec": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}",
    "invalid UTF-8 inside JSON": b'{"verb": "\xc3\x28"}',
    "unknown job": b'{"verb": "pause", "job_id": "job-999"}',
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_request_gets_an_error_reply(supervisor, name):
    reply = raw_request(supervisor.control, [MALFORMED[name]])
    assert reply is not None, f"{name}: no reply"
    assert reply["ok"] is False and reply["error"], reply
    assert_alive(supervisor.control)


def test_multi_frame_and_oversized_requests(supervisor):
    reply = raw_request(supervisor.control, [b'{"verb": "list"}', b"second frame"])
    assert reply is not None and not reply["ok"] and "one frame" in reply["error"]
    # Over the application limit: an error reply naming the limit.
    big = json.dumps({"verb": "submit", "spec": {"pad": "x" * (MAX_REQUEST_BYTES + 10)}}).encode()
    reply = raw_request(supervisor.control, [big])
    assert reply is not None and not reply["ok"] and "over the limit" in reply["error"], reply
    # Over the socket limit (ZMQ_MAXMSGSIZE): ZeroMQ drops that connection before buffering it all...
    huge = b"x" * (SOCKET_MAX_MESSAGE_BYTES + 1)
    assert raw_request(supervisor.control, [huge], timeout=2.0) is None
    # ...and the supervisor keeps serving everyone else.
    assert_alive(supervisor.control)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    payload=st.one_of(
        st.binary(max_size=512),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {
                "verb": st.sampled_from(
                    ["submit", "status", "pause", "resume", "stop", "cancel", "checkpoint_now", "logs", "bogus"]
                )
            },
            optional={
                "job_id": st.one_of(st.text(max_size=70), st.integers()),
                "lines": st.one_of(st.integers(), st.text(max_size=5)),
                "spec": st.dictionaries(
                    st.sampled_from(["config", "name", "max_restarts", "x"]),
                    st.one_of(st.integers(), st.text(max_size=5), st.none()),
                    max_size=3,
                ),
            },
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_fuzzed_requests_always_get_a_reply(supervisor, payload):
    reply = raw_request(supervisor.control, [payload])
    assert reply is not None, f"no reply to {payload[:200]!r}"
    assert isinstance(reply.get("ok"), bool)
    if reply["ok"] is False:
        assert isinstance(reply["error"], str) and reply["error"]


def test_fuzzing_left_it_healthy(supervisor):
    # Anything submitted by the fuzzer would show here; random specs must never be launched half-valid.
    for payload in MALFORMED.values():
        raw_request(supervisor.control, [payload])
    assert_alive(supervisor.control)
    assert supervisor.client.list() == []


def test_invalid_spec_names_every_bad_field_and_launches_nothing(supervisor, tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("max_restarts: -1\nbogus: 1\nconfig:\n  train: {batch_size: 0}\n  model: {width: 9}\n")
    cli = [sys.executable, "-m", "alexserve.cli", "job", "submit", str(spec), "--supervisor", supervisor.control]
    result = subprocess.run(cli, capture_output=True, text=True, timeout=60, env=supervisor_env())
    assert result.returncode == 2, result
    for field in ("max_restarts", "bogus", "config.train.batch_size", "config.model.width"):
        assert field in result.stderr, (field, result.stderr)
    # The supervisor's own check (a client that skips local validation) names them too.
    with pytest.raises(Exception) as err:
        supervisor.client.submit({"max_restarts": -1, "bogus": 1, "config": {"train": {"batch_size": 0}}}, "bad.json")
    for field in ("max_restarts", "bogus", "config.train.batch_size"):
        assert field in str(err.value)
    assert supervisor.client.list() == []
    assert not list((supervisor.state_dir / "jobs").iterdir())  # nothing written, nothing launched


def test_client_without_supervisor_fails_fast_and_clearly(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "alexserve.cli", "job", "list", "--supervisor", address, "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=supervisor_env(),
    )
    assert result.returncode == 3
    assert "no answer from a supervisor" in result.stderr and address in result.stderr
    assert time.monotonic() - started < 30


def test_error_reply_gives_exit_code_1(supervisor):
    result = subprocess.run(
        [sys.executable, "-m", "alexserve.cli", "job", "status", "job-42", "--supervisor", supervisor.control],
        capture_output=True,
        text=True,
        timeout=60,
        env=supervisor_env(),
    )
    assert result.returncode == 1 and "no job 'job-42'" in result.stderr


@pytest.mark.parametrize("flags", [["--control", "tcp://0.0.0.0:{port}"], ["--metrics-host", "0.0.0.0"]])
def test_non_loopback_bind_without_token_is_refused(tmp_path, flags):
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "alexserve.supervisor",
        "--state-dir",
        str(tmp_path / "state"),
        "--metrics-port",
        str(free_port()),
        *[f.format(port=port) for f in flags],
    ]
    if "--control" not in flags:
        args += ["--control", f"tcp://127.0.0.1:{port}"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, env=supervisor_env())
    assert result.returncode == 2
    assert "refusing to bind" in result.stderr and "token" in result.stderr
    assert not (tmp_path / "state").exists() or not list((tmp_path / "state").rglob("job.json"))


def test_token_required_on_every_request(tmp_path):
    token = "s3cret-token-0123456789"
    sup = start_supervisor(tmp_path / "state", token=token, control_host="0.0.0.0")
    try:
        address = sup.control
        reply = raw_request(address, [b'{"verb": "list"}'])
        assert reply == {"ok": False, "error": reply["error"]} and "unauthorized" in reply["error"]
        reply = raw_request(address, [json.dumps({"verb": "list", "token": "wrong-token-0123456789"}).encode()])
        assert not reply["ok"] and "unauthorized" in reply["error"]
        reply = raw_request(address, [json.dumps({"verb": "list", "token": token}).encode()])
        assert reply == {"ok": True, "result": {"jobs": []}}
    finally:
        sup.stop()
