"""Where things live in a prepared tree, and the class index.

`alexserve prepare SRC DST` writes:

    DST/train/<synset>/<name>.JPEG   every image 256x256 (DataConfig.scale_size), RGB, JPEG
    DST/val/<synset>/<name>.JPEG     same, one folder per class even when SRC/val was flat
    DST/classes.json                 [{"index": 0, "synset": "n01440764", "name": "tench"}, ...]
    DST/stats.npz                    mean image and RGB PCA (see `stats.py`)
    DST/prepare_report.json          every input that was converted or rejected, with the reason
    DST/prepare_journal.jsonl        one line per finished input; lets a re-run skip finished work

The loaders read only train/, val/, classes.json and stats.npz.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from alexserve.config import MAX_CLASSES  # more classes than a config accepts (ModelConfig.num_classes) is damage
from alexserve.durable import write_atomically

STATS_FILE = "stats.npz"
CLASSES_FILE = "classes.json"
REPORT_FILE = "prepare_report.json"
JOURNAL_FILE = "prepare_journal.jsonl"
PREPARED_SUFFIX = ".JPEG"


class DatasetError(ValueError):
    """A data tree that cannot be used; the message names the path and what to run."""


@dataclass(frozen=True)
class ClassInfo:
    index: int
    synset: str
    name: str


@dataclass(frozen=True)
class LabeledFile:
    path: Path
    label: int


def write_class_index(path: Path, classes: list[ClassInfo]) -> None:
    rows = [{"index": c.index, "synset": c.synset, "name": c.name} for c in classes]
    atomic_write_text(path, json.dumps(rows, indent=1) + "\n")


def read_class_index(path: Path) -> list[ClassInfo]:
    if not path.is_file():
        raise DatasetError(f"{path}: class index not found; run `alexserve prepare SRC DST` to make a prepared tree")
    try:
        rows = json.loads(path.read_text(), parse_constant=_refuse_constant)
        if not isinstance(rows, list) or len(rows) > MAX_CLASSES:
            raise ValueError(f"expected a list of at most {MAX_CLASSES} classes")
        classes = []
        for r in rows:
            if type(r["index"]) is not int:
                raise ValueError(f"index {r['index']!r} is not an integer")
            classes.append(ClassInfo(r["index"], str(r["synset"]), str(r.get("name", r["synset"]))))
    except (ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{path}: not a class index written by `alexserve prepare`: {err}") from None
    if [c.index for c in classes] != list(range(len(classes))):
        raise DatasetError(f"{path}: class indices must be 0..{len(classes) - 1} in order")
    return classes


def _refuse_constant(name: str):
    raise ValueError(f"non-finite number {name}")


def list_prepared_split(split_dir: Path, classes: list[ClassInfo]) -> list[LabeledFile]:
    """Every prepared image of one split, sorted by (class index, file name): a stable order to permute."""
    if not split_dir.is_dir():
        raise DatasetError(
            f"{split_dir}: not a directory; run `alexserve prepare SRC DST` and point at DST/train or DST/val"
        )
    by_synset = {c.synset: c.index for c in classes}
    files: list[LabeledFile] = []
    for entry in sorted(split_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            raise DatasetError(
                f"{entry}: a prepared split holds only class folders; was this tree made by `alexserve prepare`?"
            )
        if entry.name not in by_synset:
            raise DatasetError(f"{entry}: class folder {entry.name!r} is not in the class index")
        label = by_synset[entry.name]
        files += [
            LabeledFile(p, label)
            for p in sorted(entry.iterdir())
            if p.suffix == PREPARED_SUFFIX and not p.name.startswith(".")
        ]
    if not files:
        raise DatasetError(f"{split_dir}: no prepared images ({PREPARED_SUFFIX}) found")
    return files


def atomic_write_text(path: Path, text: str) -> None:
    write_atomically(path, text.encode())
