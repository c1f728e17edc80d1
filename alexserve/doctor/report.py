"""The doctor's table: one row per check, pass / fail / skip, and a detail that says what was measured."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["pass", "fail", "skip"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str


def format_table(results: list[CheckResult]) -> str:
    name_width = max([len("check"), *(len(r.name) for r in results)])
    lines = [f"{'check':<{name_width}}  result  detail", f"{'-' * name_width}  ------  {'-' * 6}"]
    lines += [f"{r.name:<{name_width}}  {r.status:<6}  {r.detail}" for r in results]
    failed = sum(r.status == "fail" for r in results)
    skipped = sum(r.status == "skip" for r in results)
    passed = len(results) - failed - skipped
    lines.append(f"{passed} passed, {failed} failed, {skipped} skipped")
    return "\n".join(lines)


def exit_code(results: list[CheckResult]) -> int:
    """0 when nothing failed (skips are fine: a CPU host has no GPU to check), 1 otherwise."""
    return 1 if any(r.status == "fail" for r in results) else 0
