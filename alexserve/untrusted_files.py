"""Reading files and YAML that someone else wrote: bounded in size, regular files only, no YAML aliases.

A job spec may come from anyone who can reach the supervisor. A path naming
`/dev/zero`, a FIFO or a huge file, or a YAML "billion laughs" built from
anchors and aliases, must cost one clear error, not memory or a hang. Torch-free:
the supervisor reads specs through it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

import yaml

MAX_CONFIG_BYTES = 1024 * 1024  # a job spec is a few hundred bytes; a megabyte is far beyond any real one


class UntrustedFileError(ValueError):
    """A file or text refused before or while parsing; the message names the file and the reason.

    `reason` is the message without the file's name, for callers that name the file themselves;
    `missing` says the file does not exist at all.
    """

    def __init__(self, path: Path, reason: str, missing: bool = False) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.missing = path, reason, missing


def open_regular_file(path: Path) -> tuple[BinaryIO, os.stat_result]:
    """`path` opened for binary reading with its fstat, refused unless it is a regular file.

    O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then tells what was really
    opened, so a path swapped between a check and the open cannot slip through.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise UntrustedFileError(path, f"cannot read: {err.strerror}", isinstance(err, FileNotFoundError)) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UntrustedFileError(path, "not a regular file (a device, FIFO, socket or folder)")
    return os.fdopen(fd, "rb"), info


def read_small_regular_file(path: Path, max_bytes: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of `path`, refused unless it is a regular file of at most `max_bytes`."""
    file, info = open_regular_file(path)
    with file:
        if info.st_size > max_bytes:
            raise UntrustedFileError(path, f"{info.st_size:,} bytes, over the limit of {max_bytes:,}")
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew while we read it
        raise UntrustedFileError(path, f"over the limit of {max_bytes:,} bytes")
    return data


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (`*name`): they are how a few hundred bytes expand to gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"YAML aliases (*{event.anchor}) are not allowed in a job spec", event.start_mark
            )
        return super().compose_node(parent, index)


def load_yaml(text: str | bytes) -> Any:
    """yaml.safe_load without aliases. Raises yaml.YAMLError, like safe_load."""
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
