"""The two service commands as a user runs them: `alexserve supervisor` and `alexserve job` (no worker launched)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers.supervisor import supervisor, supervisor_env  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(120)


def alexserve(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alexserve", *argv], capture_output=True, text=True, timeout=60, env=supervisor_env()
    )


@pytest.mark.parametrize("module", [["-m", "alexserve", "supervisor"], ["-m", "alexserve.supervisor"]])
def test_supervisor_help_names_its_flags(module):
    result = subprocess.run(
        [sys.executable, *module, "--help"], capture_output=True, text=True, timeout=60, env=supervisor_env()
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--state-dir", "--control", "--metrics-port", "--token-file", "--max-running", "--stop-timeout"):
        assert flag in result.stdout
    assert "--worker-module" not in result.stdout


def test_job_help_lists_every_verb():
    result = alexserve("job", "--help")
    assert result.returncode == 0, result.stderr
    for sub in ("submit", "list", "ping", "status", "pause", "resume", "stop", "cancel", "checkpoint-now", "logs"):
        assert sub in result.stdout


def test_job_commands_against_a_running_supervisor(supervisor):  # noqa: F811 (fixture)
    address = ["--supervisor", supervisor.control]
    ping = alexserve("job", "ping", *address)
    assert ping.returncode == 0 and ping.stdout.startswith("ok: up "), ping.stderr
    listed = alexserve("job", "list", *address)
    assert listed.returncode == 0 and listed.stdout.strip() == "no jobs", listed.stderr
    as_json = alexserve("job", "list", "--json", *address)
    assert as_json.returncode == 0 and '"jobs": []' in as_json.stdout
    refused = alexserve("job", "checkpoint-now", "job-5", *address)
    assert refused.returncode == 1
    assert "alexserve job checkpoint-now: the supervisor refused: no job 'job-5'" in refused.stderr
    assert "[alexserve supervisor]" in supervisor.log() and "control tcp://" in supervisor.log()
