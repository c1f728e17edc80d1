"""How committed checkpoints are named on disk: the one rule the store and the supervisor share.

A checkpoint of the state after N optimizer steps is the folder `step-NNNNNNNNN`
(at least nine digits, so names sort by step) holding a `COMMITTED` manifest,
written last. A folder without its manifest is not a checkpoint. Torch-free:
the supervisor, which never imports torch, reads checkpoint folders through it.
"""

from __future__ import annotations

import re
from pathlib import Path

MARKER = "COMMITTED"
_STEP_DIR = re.compile(r"^step-(\d{9,})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:09d}"


def parse_step_dir_name(name: str) -> int | None:
    """The step of a checkpoint folder's name, or None for any other name."""
    match = _STEP_DIR.match(name)
    return int(match.group(1)) if match else None


def newest_committed_step(directory: Path) -> int | None:
    """Step of the newest committed checkpoint in a checkpoint folder, None when it holds none (or is unreadable)."""
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return None
    steps = [step for p in entries if (step := parse_step_dir_name(p.name)) is not None and (p / MARKER).is_file()]
    return max(steps, default=None)
