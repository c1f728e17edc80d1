"""alexserve.launch's exit status: the first failed worker's code, and ALEXSERVE_PREEMPTED_EXIT_CODE in place of
PREEMPTED (75) only, for schedulers that retry only some codes (deploy/kubernetes/: 203, for the Kubeflow Training
Operator's restartPolicy ExitCode, which retries 128 and above). torchrun itself is replaced by a stub that fails
the way torchrun does, so no worker runs."""

from __future__ import annotations

import signal

import pytest
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from alexserve import launch
from alexserve.contract.names import WorkerExit

ARGV = ["--standalone", "--nproc-per-node=2", "-m", "alexserve.worker", "--resume"]


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    # main() installs its forwarding handlers in this process: put the test runner's back.
    saved = {name: signal.getsignal(getattr(signal, name)) for name in launch.PREEMPT_SIGNALS}
    yield
    for name, handler in saved.items():
        signal.signal(getattr(signal, name), handler)


def workers_exit(monkeypatch, code: int | None) -> None:
    """torchrun.run as it ends when worker 0 exits with `code` (None: it returns, every worker exited 0)."""

    def run(args) -> None:
        if code is not None:
            failure = ProcessFailure(local_rank=0, pid=4242, exitcode=code, error_file="<N/A>")
            raise ChildFailedError(name="alexserve.worker", failures={0: failure})

    monkeypatch.setattr(launch.torchrun, "run", run)


@pytest.mark.parametrize("code", [int(c) for c in WorkerExit if c != WorkerExit.OK])
def test_without_the_variable_the_launcher_exits_with_the_workers_code(monkeypatch, code):
    monkeypatch.delenv(launch.PREEMPTED_EXIT_CODE_ENV, raising=False)
    workers_exit(monkeypatch, code)
    assert launch.main(ARGV) == code


@pytest.mark.parametrize("code", [0, 1, 2, 3, 4, 75])
def test_the_variable_replaces_preempted_only(monkeypatch, capsys, code):
    monkeypatch.setenv(launch.PREEMPTED_EXIT_CODE_ENV, "203")
    workers_exit(monkeypatch, code or None)
    expected = 203 if code == WorkerExit.PREEMPTED else code
    assert launch.main(ARGV) == expected
    said = "exiting 203 (ALEXSERVE_PREEMPTED_EXIT_CODE)" in capsys.readouterr().err
    assert said == (code == WorkerExit.PREEMPTED)


def test_a_worker_killed_by_a_signal_is_failed_not_preempted(monkeypatch):
    monkeypatch.setenv(launch.PREEMPTED_EXIT_CODE_ENV, "203")
    workers_exit(monkeypatch, -signal.SIGKILL)  # how torchrun reports a worker killed by SIGKILL
    assert launch.main(ARGV) == WorkerExit.FAILED


@pytest.mark.parametrize("value", ["0", "2", "3", "4", "1", "256", "-1", "abc", "20 3"])
def test_a_code_that_could_be_read_as_success_or_a_real_failure_is_refused(monkeypatch, capsys, value):
    monkeypatch.setenv(launch.PREEMPTED_EXIT_CODE_ENV, value)
    workers_exit(monkeypatch, int(WorkerExit.PREEMPTED))
    assert launch.main(ARGV) == WorkerExit.BAD_INPUT
    assert f"ALEXSERVE_PREEMPTED_EXIT_CODE={value!r}" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["75", "128", "203", "255", " 203 "])
def test_codes_that_keep_preemption_distinct_are_accepted(value):
    assert launch.preempted_exit_code({launch.PREEMPTED_EXIT_CODE_ENV: value}) == int(value)
    assert launch.preempted_exit_code({}) == WorkerExit.PREEMPTED
