"""Where a job may write: folders below the supervisor's runs root, never another job's.

    runs/                     --runs-root (default STATE_DIR/runs), owned by the supervisor
    runs/job-7/               a job's run dir when its spec names none (history, checkpoints/)
    runs/alexnet-imagenet/    `run_dir: alexnet-imagenet` in a spec

A spec's `run_dir` and `config.train.checkpoint_dir` are relative to the runs
root. Absolute paths, `..`, `~` and names of the form `job-N` (the default
folders) are refused; the path is resolved (symlinks followed) and must stay
below the root. A folder that lies in, contains or equals a folder of any
recorded job is refused, naming that job, unless the spec says
`continues: JOB`: then it takes that job's folders (and its run id, the
identity its checkpoints carry). Nor may a folder hold or lie in the
supervisor's job records (compared by inode too, so a bind mount that shows
the state dir inside the runs root, as in deploy/, does not slip through). These limits are the supervisor's: the worker
run by hand with torchrun writes wherever its config says.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from alexserve.supervisor.jobs import JobRecord

DEFAULT_FOLDER = re.compile(r"^job-\d+$")


class PathRefused(ValueError):
    """A run or checkpoint folder the supervisor will not let a job use; the message says why."""


def folder_below(runs_root: Path, value: Path | str, field: str) -> Path:
    """`value` (relative to `runs_root`) resolved, symlinks followed; PathRefused unless it stays below the root."""
    path = Path(value)
    where = f"{field} {str(value)!r}"
    if path.is_absolute():
        raise PathRefused(f"{where}: give a path relative to the runs root {runs_root} (absolute paths are refused)")
    if ".." in path.parts:
        raise PathRefused(f"{where}: '..' is refused; give a path below the runs root {runs_root}")
    if not path.parts:
        raise PathRefused(f"{where}: name a folder below the runs root {runs_root}, not the root itself")
    if path.parts[0].startswith("~"):
        raise PathRefused(f"{where}: '~' is not expanded; give a path relative to the runs root {runs_root}")
    if DEFAULT_FOLDER.match(path.parts[0]):
        raise PathRefused(f"{where}: names of the form job-N are the supervisor's default run dirs; pick another")
    resolved = (runs_root / path).resolve()
    if resolved == runs_root or not resolved.is_relative_to(runs_root):
        raise PathRefused(f"{where} resolves to {resolved}, outside the runs root {runs_root} (a symlink?)")
    return resolved


def job_folders(job: JobRecord) -> list[Path]:
    """The folders a recorded job writes to (as recorded: resolved when it was submitted)."""
    folders = [Path(job.run_dir)]
    if job.checkpoint_dir:
        folders.append(Path(job.checkpoint_dir))
    return folders


def overlap(a: Path, b: Path) -> bool:
    """The same folder, or one inside the other: a job writing to either can destroy the other's files."""
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check_unshared(folders: dict[str, Path], recorded: Iterable[JobRecord], run_id: str | None) -> None:
    """PathRefused naming the first recorded job (outside the `run_id` lineage) that uses one of `folders`."""
    for job in recorded:
        if run_id is not None and (job.run_id or job.id) == run_id:
            continue  # the job being continued, and the ones it continued
        for field, folder in folders.items():
            for theirs in job_folders(job):
                if overlap(folder, theirs.resolve()):
                    raise PathRefused(
                        f"{field} {folder} is already used by {job.id} ({theirs}); two jobs never share a "
                        f"folder: pick another, or say `continues: {job.id}` to continue that job"
                    )


def check_unmoved(job: JobRecord) -> None:
    """PathRefused when a recorded folder now resolves elsewhere (a symlink planted since the job was submitted)."""
    for folder in job_folders(job):
        if folder.resolve() != folder:
            raise PathRefused(f"{folder} now resolves to {folder.resolve()}; refusing to launch {job.id} there")


def _identities(path: Path) -> set[tuple[int, int]]:
    """(device, inode) of `path` and of each of its existing parents."""
    found = set()
    for candidate in (path, *path.parents):
        try:
            stat = candidate.stat()
        except OSError:
            continue
        found.add((stat.st_dev, stat.st_ino))
    return found


def check_clear_of(folders: dict[str, Path], records: Path) -> None:
    """PathRefused when a folder is, lies in, or holds `records` (the supervisor's jobs/ folder)."""
    try:
        stat = records.stat()
    except OSError:
        return
    records_id, records_line = (stat.st_dev, stat.st_ino), _identities(records)
    for field, folder in folders.items():
        if overlap(folder, records) or records_id in _identities(folder):
            raise PathRefused(f"{field} {folder} lies in the supervisor's job records ({records}); pick another")
        try:
            folder_stat = folder.stat()
        except OSError:
            continue
        if (folder_stat.st_dev, folder_stat.st_ino) in records_line:
            raise PathRefused(f"{field} {folder} holds the supervisor's job records ({records}); pick another")
