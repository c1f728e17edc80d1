"""Files that survive crashes: written whole under a temporary name, fsynced, renamed.

Readers see the old file or the new one, never a torn one, even after SIGKILL;
the directory fsync makes the rename itself survive a power loss.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_dir(directory: Path) -> None:
    """Makes renames and new entries in `directory` durable (a file's own fsync does not cover its name)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_through(path: Path, write: Callable[[BinaryIO], None], sync_dir: bool = True) -> None:
    """Calls `write(file)` on a temporary file beside `path`, fsyncs it, renames it onto `path`.

    `sync_dir=False` skips the directory fsync: for bulk output (thousands of images) whose
    completion is recorded elsewhere, where a rename lost to a power cut only means redoing a file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def write_atomically(path: Path, data: bytes, sync_dir: bool = True) -> None:
    write_through(path, lambda f: f.write(data), sync_dir)
