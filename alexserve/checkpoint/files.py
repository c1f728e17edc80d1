"""The checkpoint store's files: written atomically with their size and SHA-256, and strict JSON.

Every file goes to a temporary name, is fsynced and renamed (alexserve/durable.py), while a wrapper counts and
hashes the bytes on their way, so the digest in a manifest is of exactly what reached the disk. JSON is written
with `allow_nan=False` and read back refusing NaN and Infinity, naming the file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from alexserve.durable import write_through


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or used; the message names the file and the reason."""


class _HashingWriter:
    """A write-only file wrapper that counts and hashes what `torch.save` streams through it."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def write_file_atomically(path: Path, write: Callable[[BinaryIO], None]) -> tuple[int, str]:
    """Writes through `write` to a temporary name, fsyncs, renames onto `path`; returns (size, sha256)."""
    writers: list[_HashingWriter] = []

    def hashed(file: BinaryIO) -> None:
        writers.append(_HashingWriter(file))
        write(writers[0])

    write_through(path, hashed)
    return writers[0].size, writers[0].sha256.hexdigest()


def write_json_atomically(path: Path, data: dict[str, Any]) -> tuple[int, str]:
    try:
        text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False).encode()
    except ValueError as err:
        raise CheckpointError(f"{path}: refusing to write a value that is not finite: {err}") from None
    return write_file_atomically(path, lambda f: f.write(text))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} (checkpoint files hold finite numbers only)")


def parse_strict_json(text: str | bytes) -> Any:
    """`json.loads` that refuses NaN, Infinity and -Infinity (Python's json accepts them by default)."""
    return json.loads(text, parse_constant=_refuse_constant)


def parse_file_entry(entry: Any) -> dict[str, Any]:
    """A manifest's or sidecar's record of one file: {file, bytes, sha256}, checked; TypeError/ValueError if not."""
    if not isinstance(entry, dict):
        raise TypeError(f"expected a mapping, got {type(entry).__name__}")
    file, size, digest = entry["file"], entry["bytes"], entry["sha256"]
    if not isinstance(file, str) or "/" in file or type(size) is not int or size < 0 or not isinstance(digest, str):
        raise ValueError(f"bad file entry {entry!r}")
    return {"file": file, "bytes": size, "sha256": digest}


def read_verified(path: Path, entry: dict[str, Any]) -> bytes:
    """The file's bytes, after checking them against the size and digest the manifest recorded."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing, though the manifest lists it") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read: {err.strerror}") from None
    if len(data) != entry["bytes"]:
        raise CheckpointError(
            f"{path}: truncated or altered: {len(data)} bytes, the manifest recorded {entry['bytes']}"
        )
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CheckpointError(f"{path}: corrupt: SHA-256 differs from the one the manifest recorded")
    return data


def list_dir(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except FileNotFoundError:
        return []


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
