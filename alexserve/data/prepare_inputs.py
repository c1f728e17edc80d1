"""What `alexserve prepare` converts: the tasks found in an ImageNet-style SRC, without leaving it.

The layouts it reads (class folders, or a flat val/ with a labels file) are in prepare.py's docstring. A symlink
is followed only when its target is inside SRC, only directories and regular files are used, and every entry
passed over is recorded with its reason (`SourceTree.skipped`, the report's "skipped").
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from alexserve.data.prepared_tree import PREPARED_SUFFIX, DatasetError


@dataclass(frozen=True)
class Task:
    src: str
    dst: str
    split: str
    synset: str


@dataclass
class SourceTree:
    """SRC, walked without leaving it; `skipped` collects every entry passed over, with the reason."""

    root: Path
    skipped: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()

    def kind(self, path: Path) -> str | None:
        """'dir' or 'file' for an entry to use; None (and a line in `skipped`) for any other."""
        if path.name.startswith("."):
            return self.skip(path, "hidden (the name starts with '.')")
        try:
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                target = Path(os.readlink(path))
                try:
                    resolved = path.resolve(strict=True)
                except FileNotFoundError:
                    return self.skip(path, f"broken symlink (-> {target})")
                except (RuntimeError, OSError):  # RuntimeError up to Python 3.12, OSError (ELOOP) after
                    return self.skip(path, f"symlink loop (-> {target})")
                if not resolved.is_relative_to(self.root):
                    return self.skip(path, f"symlink leaving the source tree (-> {resolved}); not followed")
                mode = os.stat(resolved).st_mode
        except OSError as err:
            return self.skip(path, f"cannot read: {err.strerror}")
        if stat.S_ISDIR(mode):
            return "dir"
        if stat.S_ISREG(mode):
            return "file"
        what = (
            "FIFO (named pipe)"
            if stat.S_ISFIFO(mode)
            else "socket"
            if stat.S_ISSOCK(mode)
            else "device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file"
        )
        return self.skip(path, what)

    def skip(self, path: Path, reason: str) -> None:
        self.skipped.append({"path": str(path), "reason": reason})
        return None

    def entries(self, folder: Path, want: str) -> list[Path]:
        """The sorted entries of `folder` of kind `want`; the others are skipped (with a reason if not hidden)."""
        kept = []
        for entry in sorted(folder.iterdir()):
            kind = self.kind(entry)
            if kind == want:
                kept.append(entry)
            elif kind is not None:
                self.skip(entry, "a folder inside a class folder (not searched)" if kind == "dir" else "not a folder")
        return kept

    def top_folder(self, path: Path) -> bool:
        """Whether SRC/train or SRC/val is a folder to read; a DatasetError when it exists but may not be read."""
        if not os.path.lexists(path):
            return False
        before = len(self.skipped)
        kind = self.kind(path)
        if kind == "dir":
            return True
        reason = self.skipped[before]["reason"] if kind is None else "not a folder"
        raise DatasetError(f"{path}: {reason}; pass the folder it stands for as SRC instead")


def _visible_files(tree: SourceTree, folder: Path) -> list[Path]:
    return tree.entries(folder, "file")


def _default_val_labels(src: Path) -> Path | None:
    for name in ("val_labels.txt", "ILSVRC2012_validation_ground_truth.txt"):
        if (src / name).is_file():
            return src / name
    return None


def _flat_val_labels(files: list[Path], labels_path: Path, synsets: list[str]) -> dict[Path, str]:
    """Map each flat val file to its synset from a labels file (see the module docstring for formats)."""
    lines = [ln.split() for ln in labels_path.read_text().splitlines() if ln.strip()]

    def to_synset(token: str, lineno: int) -> str:
        if token.isdigit():
            idx = int(token) - 1
            if not 0 <= idx < len(synsets):
                raise DatasetError(f"{labels_path}:{lineno}: label {token} is outside 1..{len(synsets)}")
            return synsets[idx]
        if token not in synsets:
            raise DatasetError(f"{labels_path}:{lineno}: synset {token!r} has no train folder")
        return token

    if all(len(parts) >= 2 for parts in lines):
        by_name = {parts[0]: to_synset(parts[1], i + 1) for i, parts in enumerate(lines)}
        missing = [f.name for f in files if f.name not in by_name]
        if missing:
            raise DatasetError(f"{labels_path}: no label for {len(missing)} val file(s), e.g. {missing[0]}")
        return {f: by_name[f.name] for f in files}
    if len(lines) != len(files):
        raise DatasetError(
            f"{labels_path}: {len(lines)} labels for {len(files)} files in val/ (one label per sorted file expected)"
        )
    return {f: to_synset(parts[0], i + 1) for i, (f, parts) in enumerate(zip(files, lines))}


def _dst_names(files: list[Path]) -> dict[Path, str]:
    """Output names: the stem + .JPEG, or the whole name + .JPEG where two inputs share a stem."""
    stems: dict[str, int] = {}
    for f in files:
        stems[f.stem] = stems.get(f.stem, 0) + 1
    return {f: (f.stem if stems[f.stem] == 1 else f.name) + PREPARED_SUFFIX for f in files}


def discover(
    src: Path, dst: Path, val_labels: Path | None, synsets_file: Path | None
) -> tuple[list[Task], list[str], list[dict]]:
    """All tasks (train first), the sorted train synsets (the class order) and the entries skipped, with reasons."""
    tree = SourceTree(src)
    train = src / "train"
    if not tree.top_folder(train):
        raise DatasetError(f"{src}: no train/ folder; expected SRC/train/<synset>/*.JPEG (ImageNet layout)")
    synsets = [p.name for p in tree.entries(train, "dir")]
    if not synsets:
        raise DatasetError(f"{train}: no class folders")
    tasks: list[Task] = []
    for s in synsets:
        files = _visible_files(tree, train / s)
        names = _dst_names(files)
        tasks += [Task(str(f), str(dst / "train" / s / names[f]), "train", s) for f in files]
    val = src / "val"
    if tree.top_folder(val):
        kinds = {entry: tree.kind(entry) for entry in sorted(val.iterdir())}  # records what it skips, once
        folders = [entry for entry, kind in kinds.items() if kind == "dir"]
        flat_files = [entry for entry, kind in kinds.items() if kind == "file"]
        if folders:
            for entry in flat_files:
                tree.skip(entry, "a file beside the class folders of val/")
            for folder in folders:
                if folder.name not in synsets:
                    raise DatasetError(f"{folder}: val class {folder.name!r} has no train folder")
                files = _visible_files(tree, folder)
                names = _dst_names(files)
                tasks += [Task(str(f), str(dst / "val" / folder.name / names[f]), "val", folder.name) for f in files]
        else:
            files = flat_files
            labels_path = val_labels or _default_val_labels(src)
            if files and labels_path is None:
                raise DatasetError(f"{val}: flat val files need a labels file; pass --val-labels FILE")
            order = synsets
            if synsets_file is not None:
                order = [ln.split()[0] for ln in synsets_file.read_text().splitlines() if ln.strip()]
            labels = _flat_val_labels(files, labels_path, order) if files else {}
            names = _dst_names(files)
            tasks += [Task(str(f), str(dst / "val" / labels[f] / names[f]), "val", labels[f]) for f in files]
    return tasks, synsets, tree.skipped
