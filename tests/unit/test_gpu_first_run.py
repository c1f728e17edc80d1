"""deploy/gpu-first-run.sh: its syntax, and every command its dry run prints is accepted by the real parsers.

The dry run prints each command as a shell line (`+ ...`); each `python -m alexserve...` one is parsed here with
the parser of the module it runs, and a worker's `--set` settings are validated as a job config, so a renamed flag
or field fails this test instead of the first run on a lent GPU. The steps themselves run in
tests/integration/test_gpu_first_run_cpu.py (`--cpu`).
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys

import pytest

from alexserve.cli import SUBCOMMANDS
from alexserve.config import load_config
from helpers.processes import REPO

SCRIPT = REPO / "deploy" / "gpu-first-run.sh"


def dry_run(tmp_path, gpus: int, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FIRST_RUN_GPUS": str(gpus), "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(SCRIPT), *extra, str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=60
    )


def python_commands(stdout: str) -> list[tuple[str, list[str]]]:
    """(module, arguments) of every printed `python -m MODULE ARGS` line, environment assignments dropped."""
    commands = []
    for line in stdout.splitlines():
        if not line.startswith("+ "):
            continue
        words = shlex.split(line[2:])
        if words[0] == "env":
            words = [w for w in words[1:] if not re.fullmatch(r"[A-Z_]+=.*", w)]
        if words[0] == sys.executable and words[1] == "-m":
            commands.append((words[2], words[3:]))
    return commands


def check_worker(argv: list[str]) -> None:
    from alexserve.worker import parse_args

    args = parse_args(argv)
    load_config(args.config, args.overrides)  # every --set names a real field with a valid value


def check(module: str, argv: list[str]) -> None:
    if module == "alexserve":
        name, rest = argv[0], argv[1:]
        if name == "train":
            check_worker(rest)
        else:
            importlib.import_module(SUBCOMMANDS[name][0]).build_parser().parse_args(rest)
    elif module == "alexserve.bench.gpu":
        from alexserve.bench.gpu import parse_args

        parse_args(argv)
    elif module == "alexserve.worker":
        check_worker(argv)
    elif module == "alexserve.launch":
        from torch.distributed import run as torchrun

        args = torchrun.parse_args(argv)
        assert args.module and args.training_script == "alexserve.worker", argv
        check_worker(args.training_script_args)
    else:
        pytest.fail(f"the script runs python -m {module}, which this test does not know how to check")


def test_the_script_parses_as_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_two_gpus_every_command_parses_and_the_kill_step_runs_two_ranks(tmp_path):
    done = dry_run(tmp_path, 2, "--dry-run")
    assert done.returncode == 0, done.stderr
    commands = python_commands(done.stdout)
    for module, argv in commands:
        check(module, argv)
    ran = [(m, a[0] if m == "alexserve" else None) for m, a in commands]
    assert ran.count(("alexserve.worker", None)) == 2  # the two tower processes of the kill step
    for wanted in [("alexserve", "doctor"), ("alexserve.bench.gpu", None), ("alexserve", "synth")]:
        assert wanted in ran, ran
    assert [a[0] for m, a in commands if m == "alexserve"].count("eval") == 2  # DALI and PIL
    bench = next(a for m, a in commands if m == "alexserve.bench.gpu")
    assert bench[bench.index("--precisions") + 1] == "fp32,bf16"
    launch = next(a for m, a in commands if m == "alexserve.launch")
    assert "dist.device=cuda" in launch and "--device" in next(a for m, a in commands if a[:1] == ["doctor"])
    assert "RANK=1" in done.stdout and "kill -9 rank 1" in done.stdout
    assert str(tmp_path / "out") in done.stdout  # every output under the one folder


def test_one_gpu_trains_with_auto_and_skips_the_kill_step(tmp_path):
    done = dry_run(tmp_path, 1, "--dry-run")
    assert done.returncode == 0, done.stderr
    commands = python_commands(done.stdout)
    for module, argv in commands:
        check(module, argv)
    assert "alexserve.worker" not in [m for m, _ in commands]
    launch = next(a for m, a in commands if m == "alexserve.launch")
    assert "dist.device=auto" in launch
    assert re.search(r"^kill +SKIP +one GPU: a two-tower job needs a GPU per rank", done.stdout, re.M), done.stdout


def test_no_gpu_and_no_cpu_flag_is_refused_with_the_reason(tmp_path):
    done = dry_run(tmp_path, 0)
    assert done.returncode == 1 and "no GPU visible" in done.stderr and "--cpu" in done.stderr


def test_an_unknown_option_is_a_usage_error(tmp_path):
    done = dry_run(tmp_path, 2, "--fast")
    assert done.returncode == 2 and "unknown option --fast" in done.stderr
