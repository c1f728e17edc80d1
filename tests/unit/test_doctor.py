"""`alexserve doctor`'s table and verdicts, in process; the whole CPU run (two real tower processes) is in
tests/integration/test_doctor_cpu_host.py."""

from __future__ import annotations

import pytest
import torch

from alexserve.cli import SUBCOMMANDS
from alexserve.cli.doctor import main
from alexserve.doctor import checks
from alexserve.doctor.report import CheckResult, exit_code, format_table


def test_table_has_a_row_per_check_and_exit_code_is_1_on_any_fail():
    rows = [
        CheckResult("GPUs seen", "skip", "no CUDA GPU"),
        CheckResult("send/recv (gloo)", "pass", "8 MB"),
        CheckResult("two-tower step vs grouped (gloo)", "fail", "max relative difference 0.5"),
    ]
    table = format_table(rows)
    lines = table.splitlines()
    assert lines[0].split() == ["check", "result", "detail"]
    assert any(line.startswith("two-tower step vs grouped (gloo)  fail    max relative") for line in lines)
    assert lines[-1] == "1 passed, 1 failed, 1 skipped"
    assert exit_code(rows) == 1
    assert exit_code([r for r in rows if r.status != "fail"]) == 0  # a skip is not a failure


def test_a_failed_rank_makes_every_pair_row_a_fail(monkeypatch):
    reports = [{"error": {"part": "send_recv", "message": "Connection closed by peer"}}, {}]
    monkeypatch.setattr(checks, "run_pair", lambda *args: (reports, "rank 1 exited 1: RuntimeError"))
    rows = checks.pair_checks("cpu", 0, 20, 60.0)
    assert [r.status for r in rows] == ["fail", "fail", "fail"]
    assert rows[0].detail == "Connection closed by peer" and "rank 1 exited 1" in rows[1].detail


def test_a_check_that_raises_is_a_failed_row_not_a_crash(monkeypatch):
    def broken(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(checks, "dali_decode", broken)
    monkeypatch.setattr(checks, "pair_checks", lambda *args: [CheckResult("pair", "pass", "")])
    rows = checks.run_checks("cpu")
    assert rows[-1] == CheckResult("DALI decode + augment", "fail", "OSError: disk full")
    assert exit_code(rows) == 1


def test_dali_cpu_decode_and_augmentation_equal_the_pil_loaders():
    (row,) = checks.dali_decode(torch.device("cpu"))
    assert row.status == "pass", row.detail
    assert "max 0," in row.detail


def test_the_grouped_reference_is_float64_and_matches_itself():
    model, logits, loss = checks.grouped_reference()
    assert logits.dtype == torch.float64 and loss.ndim == 0
    assert checks.max_relative_difference(logits, logits) == 0.0
    assert checks.max_relative_difference(2 * logits, logits) == pytest.approx(1.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a host without a GPU says")
def test_asking_for_cuda_without_a_gpu_fails_fast(capsys):
    assert main(["--device", "cuda"]) == 1
    out = capsys.readouterr().out
    assert "GPUs seen  fail    no CUDA GPU visible" in out


def test_doctor_is_a_subcommand():
    assert SUBCOMMANDS["doctor"][0] == "alexserve.cli.doctor"
