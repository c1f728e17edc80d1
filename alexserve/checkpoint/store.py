"""Crash-safe checkpoints written by a group of ranks: complete or invisible.

Layout under the store's directory:

    step-000001234/          a committed checkpoint (the state after 1234 optimizer steps)
        tower0.pt            shard of tower 0: weights, optimizer state, RNG states
        tower0.json          its size and SHA-256, written by its writer
        tower1.pt, tower1.json
        shared.pt            rank 0's shared part: schedule, data position, ...
        config.json          the job's config, human-readable
        COMMITTED            the manifest; written last; lists every file's size and SHA-256
    .staging/step-000001240/ a checkpoint being written (or abandoned by a crash)
    .trash/                  committed checkpoints being deleted

The protocol, for each checkpoint:

1. Each shard's writer calls `write_shard(step, name, payload)`. The file goes
   to a temporary name in the step's staging folder, is fsynced and renamed;
   then a small `name.json` (size and digest) follows the same way. A
   `name.json` therefore only exists once its shard is complete.
2. The caller makes every rank wait (a barrier) until all shards are written.
3. Rank 0 calls `commit(step, shared, config)`: it checks every expected shard
   is there, writes `shared.pt` and `config.json`, then the `COMMITTED`
   manifest (temporary name, fsync, rename, fsync folder), then renames the
   staging folder to `step-NNNNNNNNN` and fsyncs the store's folder.

A reader only looks at `step-*` folders holding a `COMMITTED` manifest, and the
rename of a whole folder is atomic, so a process killed at any point (SIGKILL,
power loss after the fsyncs) leaves either the previous set of checkpoints or
the new complete one. Staging folders are never read; `commit` deletes the
stale ones (those at or before the step it commits), deletes committed
checkpoints after the step it commits (an abandoned run's: see `_clean_up`)
and prunes old ones beyond `keep_last`, never the one it just committed.

The directory must be one all writers see (one machine, or a shared file
system): rank 0 checks the other ranks' files before it commits.

Which ranks write: one writer per shard name. With two towers, the rank of
each tower writes `tower0` / `tower1`; with data parallelism inside a tower,
only that tower's data-parallel rank 0 writes (its replicas hold the same
weights). The store is told the shard names up front, so `commit` and `load`
can say which one is missing.

Whose checkpoints: a store opened with a `job_id` (the supervisor's job
identity, ALEXSERVE_JOB_ID) records it in every manifest it commits, and never
deletes (prunes, or drops as abandoned) a checkpoint that records another
identity or none. `identity_problem` says whether a checkpoint may be resumed
by this job: a store with a `job_id` accepts only its own; a store without one
(a worker run by hand) accepts any, as before identities existed.

Numbers read back are checked: the manifest, shard records and config.json are
strict JSON, written with `allow_nan=False` and parsed refusing NaN and
Infinity, naming the file (files.py).

Loading always uses `torch.load(weights_only=True)`: a checkpoint never runs
code. `write_shard` and `commit` refuse payloads that such a load could not
read back (numpy arrays, dataclasses, Paths...), naming the key (payload.py).
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alexserve.checkpoint.files import (
    CheckpointError,
    list_dir,
    parse_file_entry,
    parse_strict_json,
    read_verified,
    remove,
    write_json_atomically,
)
from alexserve.checkpoint.naming import MARKER, parse_step_dir_name, step_dir_name
from alexserve.checkpoint.payload import check_loadable, save_torch, torch_load
from alexserve.durable import fsync_dir

FORMAT_VERSION = 1
JOB_ID_KEY = "job_id"  # in the manifest: the supervisor job that wrote it; null for a worker run by hand
SHARED = "shared"
CONFIG_FILE = "config.json"
STAGING = ".staging"
TRASH = ".trash"
_SHARD_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class CheckpointRef:
    """A committed checkpoint: its step, its folder and its manifest (the parsed COMMITTED file)."""

    step: int
    path: Path
    manifest: dict[str, Any]

    @property
    def shard_names(self) -> list[str]:
        shards = self.manifest.get("shards")
        return sorted(shards) if isinstance(shards, dict) else []


# ---------------------------------------------------------------- the store


class CheckpointStore:
    """Checkpoints of one job in `directory`, written by the ranks that own `shard_names`."""

    def __init__(
        self,
        directory: Path,
        keep_last: int,
        shard_names: Sequence[str] = ("tower0", "tower1"),
        job_id: str | None = None,
    ) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, got {keep_last}")
        for name in shard_names:
            if not _SHARD_NAME.match(name) or name == SHARED:
                raise ValueError(f"shard name {name!r} must be letters, digits, '-' or '_', and not {SHARED!r}")
        if len(set(shard_names)) != len(shard_names):
            raise ValueError(f"shard names repeat: {list(shard_names)}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.shard_names = tuple(shard_names)
        self.job_id = job_id

    # ---- writing

    def staging_dir(self, step: int) -> Path:
        return self.directory / STAGING / step_dir_name(step)

    def write_shard(self, step: int, name: str, payload: dict[str, Any]) -> Path:
        """Writes one shard of the checkpoint at `step` (any rank; one writer per name). Atomic per file."""
        if name not in self.shard_names:
            raise CheckpointError(f"shard {name!r} is not one of this store's shards {list(self.shard_names)}")
        check_loadable(payload, where=f"shard {name!r}")
        staging = self.staging_dir(step)
        self._make_dirs(staging)
        size, digest = save_torch(
            staging / f"{name}.pt", {"format_version": FORMAT_VERSION, "step": step, "payload": payload}
        )
        # The sidecar follows the shard, so its presence proves the shard is whole.
        write_json_atomically(staging / f"{name}.json", {"file": f"{name}.pt", "bytes": size, "sha256": digest})
        return staging / f"{name}.pt"

    def _make_dirs(self, staging: Path) -> None:
        """Creates the store and staging folders.

        The parent of any new store folder is fsynced, so the folder survives a power loss.
        """
        if not self.directory.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.directory.parent)
        staging.mkdir(parents=True, exist_ok=True)

    def commit(self, step: int, shared: dict[str, Any], config: dict[str, Any]) -> CheckpointRef:
        """Rank 0, after a barrier following every `write_shard`: makes the checkpoint at `step` visible.

        `shared` is the state every rank shares (schedule, data position...);
        `config` the job config as a JSON-able dict (`JobConfig.model_dump(mode="json")`).
        """
        check_loadable(shared, where="shared")
        staging = self.staging_dir(step)
        files = {name: self._read_sidecar(staging, name) for name in self.shard_names}
        self._remove_strays(staging)
        size, digest = save_torch(
            staging / f"{SHARED}.pt", {"format_version": FORMAT_VERSION, "step": step, "payload": shared}
        )
        files[SHARED] = {"file": f"{SHARED}.pt", "bytes": size, "sha256": digest}
        size, digest = write_json_atomically(staging / CONFIG_FILE, config)
        manifest = {
            "format_version": FORMAT_VERSION,
            "step": step,
            JOB_ID_KEY: self.job_id,
            "created_unix": time.time(),
            "shards": {name: files[name] for name in self.shard_names},
            "shared": files[SHARED],
            "config": {"file": CONFIG_FILE, "bytes": size, "sha256": digest},
        }
        write_json_atomically(staging / MARKER, manifest)
        final = self._publish(staging, step)
        self._clean_up(step)
        return CheckpointRef(step=step, path=final, manifest=manifest)

    def _read_sidecar(self, staging: Path, name: str) -> dict[str, Any]:
        sidecar = staging / f"{name}.json"
        if not sidecar.exists():
            raise CheckpointError(
                f"{staging}: shard {name!r} is missing ({sidecar.name} not found); "
                "every shard's writer must finish write_shard before the barrier that precedes commit"
            )
        try:
            return parse_file_entry(parse_strict_json(sidecar.read_text()))
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{sidecar}: unreadable shard record: {err}") from None

    def _remove_strays(self, staging: Path) -> None:
        """Drops temporaries and files of other shard names left by an earlier, crashed attempt at this step.

        Safe here: after the barrier no rank writes into this folder any more.
        """
        wanted = {f"{n}.pt" for n in self.shard_names} | {f"{n}.json" for n in self.shard_names}
        for entry in staging.iterdir():
            if entry.name not in wanted:
                remove(entry)

    def _publish(self, staging: Path, step: int) -> Path:
        """Renames the sealed staging folder into place; an older folder of the same step goes to the trash first."""
        final = self.directory / step_dir_name(step)
        if final.exists():
            # A re-run of this step (resumed from an older checkpoint). Rename, don't
            # delete in place: a crash mid-delete must not leave a torn visible folder.
            self._to_trash(final)
        os.replace(staging, final)
        fsync_dir(self.directory)
        fsync_dir(staging.parent)
        return final

    def _to_trash(self, path: Path) -> None:
        trash = self.directory / TRASH
        trash.mkdir(exist_ok=True)
        os.replace(path, trash / f"{path.name}-{uuid.uuid4().hex[:8]}")
        fsync_dir(self.directory)

    def _clean_up(self, committed_step: int) -> None:
        """Deletes stale staging folders and abandoned or surplus checkpoints, then empties the trash.

        Committed checkpoints after `committed_step` come from a run that was
        abandoned: this one resumed from an older checkpoint (the newest was
        damaged, or a user chose). Kept, they would be what the next automatic
        resume picks, jumping back to the abandoned run; so they go. Then the
        newest `keep_last` remain, the one just committed always among them.
        """
        for entry in list_dir(self.directory / STAGING):
            step = parse_step_dir_name(entry.name)
            # Later steps may belong to a rank already writing the next checkpoint: leave them.
            if step is None or step <= committed_step:
                remove(entry)
        # Another job's checkpoints (or ones of unknown origin) are never this store's to delete.
        committed = [ref for ref in self.committed() if self.owns(ref)]
        abandoned = [ref for ref in committed if ref.step > committed_step]
        kept = [ref for ref in committed if ref.step <= committed_step]
        for ref in abandoned + kept[: max(0, len(kept) - self.keep_last)]:
            self._to_trash(ref.path)
        for entry in list_dir(self.directory / TRASH):
            remove(entry)

    # ---- reading

    def committed(self) -> list[CheckpointRef]:
        """Every committed checkpoint, oldest first. Folders without a readable manifest are ignored."""
        refs = []
        for entry in list_dir(self.directory):
            step = parse_step_dir_name(entry.name)
            if step is None or not (entry / MARKER).is_file():
                continue
            try:
                manifest = parse_strict_json((entry / MARKER).read_text())
                if not isinstance(manifest, dict):
                    raise ValueError(f"expected a JSON object, got {type(manifest).__name__}")
            except (OSError, ValueError) as err:
                # The marker is renamed into place whole, so this is damage after the fact, not a crash.
                warnings.warn(f"{entry / MARKER}: ignoring checkpoint with an unreadable manifest: {err}", stacklevel=2)
                continue
            refs.append(CheckpointRef(step=step, path=entry, manifest=manifest))
        return sorted(refs, key=lambda ref: ref.step)

    def owns(self, ref: CheckpointRef) -> bool:
        """Whether this store may delete `ref`: any checkpoint without a job identity of its own, else its own only."""
        return self.job_id is None or written_by(ref) == self.job_id

    def identity_problem(self, ref: CheckpointRef) -> str | None:
        """Why this job may not resume from `ref` (another job's, or of unknown origin), or None when it may.

        A store without a job identity (a worker run by hand) may resume anything.
        """
        if self.job_id is None:
            return None
        writer = written_by(ref)
        if writer == self.job_id:
            return None
        if writer is None:
            return (
                f"{ref.path}: the checkpoint records no job identity (written by a worker run by hand, or before "
                f"alexserve recorded one); job {self.job_id!r} resumes only from its own checkpoints. Resume it "
                "by hand (torchrun ... -m alexserve.worker --resume), or give this job a folder of its own"
            )
        return (
            f"{ref.path}: the checkpoint was written by job {writer!r}, not by this job {self.job_id!r}; "
            "a job resumes only from its own checkpoints: give this job a folder of its own"
        )

    def latest(self) -> CheckpointRef | None:
        """The newest committed checkpoint, or None when there is none."""
        refs = self.committed()
        return refs[-1] if refs else None

    def load(self, ref: CheckpointRef, name: str, map_location: Any = "cpu") -> dict[str, Any]:
        """The payload of shard `name` (or "shared"), checked against the manifest and loaded with weights_only."""
        entry = self._manifest_entry(ref, name)
        data = read_verified(ref.path / entry["file"], entry)
        content = torch_load(ref.path / entry["file"], data, map_location)
        if not isinstance(content, dict) or "payload" not in content or content.get("step") != ref.step:
            raise CheckpointError(f"{ref.path / entry['file']}: not a shard of step {ref.step}")
        return content["payload"]

    def verify(self, ref: CheckpointRef) -> None:
        """Checks every file of the checkpoint against the manifest (size, SHA-256) without unpickling anything.

        For an automatic resume that falls back to an older checkpoint when the newest is damaged.
        """
        for name in [*ref.shard_names, SHARED, CONFIG_FILE]:
            entry = self._manifest_entry(ref, name)
            read_verified(ref.path / entry["file"], entry)

    def load_shared(self, ref: CheckpointRef, map_location: Any = "cpu") -> dict[str, Any]:
        return self.load(ref, SHARED, map_location)

    def load_config(self, ref: CheckpointRef) -> dict[str, Any]:
        """The job config saved with the checkpoint, as the dict given to `commit`."""
        entry = self._manifest_entry(ref, CONFIG_FILE)
        path = ref.path / entry["file"]
        try:
            config = parse_strict_json(read_verified(path, entry))
        except ValueError as err:
            raise CheckpointError(f"{path}: not valid JSON: {err}") from None
        if not isinstance(config, dict):
            raise CheckpointError(f"{path}: expected a JSON object, got {type(config).__name__}")
        return config

    def check_model_config(
        self, ref: CheckpointRef, model_cfg: dict[str, Any], fields: Iterable[str] | None = None
    ) -> None:
        """Raises CheckpointError listing every model field (all, or `fields`) that differs from the checkpoint's."""
        path = ref.path / CONFIG_FILE
        saved = self.load_config(ref).get("model")
        if not isinstance(saved, dict):
            raise CheckpointError(f"{path}: has no 'model' section")
        # Through JSON, so tuples and lists (or 1 and 1.0) from either side compare equal.
        saved = json.loads(json.dumps(saved))
        running = json.loads(json.dumps(model_cfg, default=str))
        names = sorted(set(saved) | set(running)) if fields is None else list(fields)
        diffs = [
            f"model.{n} is {saved.get(n, '<absent>')!r} in the checkpoint "
            f"but {running.get(n, '<absent>')!r} in the running config"
            for n in names
            if saved.get(n, "<absent>") != running.get(n, "<absent>")
        ]
        if diffs:
            raise CheckpointError(f"{path}: checkpoint does not fit this model: " + "; ".join(diffs))

    def _manifest_entry(self, ref: CheckpointRef, name: str) -> dict[str, Any]:
        marker = ref.path / MARKER
        manifest = ref.manifest
        if manifest.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{marker}: format version {manifest.get('format_version')!r}, this code reads {FORMAT_VERSION}"
            )
        try:
            if name == SHARED:
                return parse_file_entry(manifest["shared"])
            if name == CONFIG_FILE:
                return parse_file_entry(manifest["config"])
            shards = manifest["shards"]
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{marker}: malformed manifest: {err}") from None
        if name not in shards:
            raise CheckpointError(f"{ref.path}: shard {name!r} is missing; the manifest lists {sorted(shards)}")
        try:
            return parse_file_entry(shards[name])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{marker}: malformed entry for shard {name!r}: {err}") from None


def written_by(ref: CheckpointRef) -> str | None:
    """The job identity recorded in `ref`'s manifest; None for a hand run or a checkpoint from before identities."""
    job_id = ref.manifest.get(JOB_ID_KEY)
    return job_id if isinstance(job_id, str) else None
