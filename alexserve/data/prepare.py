"""The paper's one-time preprocessing of an ImageNet-style tree (the `alexserve prepare` library).

SRC layout: `train/<synset>/*` (one folder per class); `val/<synset>/*`, or flat
`val/*` with a labels file (`--val-labels`, default SRC/val_labels.txt or the devkit's
SRC/ILSVRC2012_validation_ground_truth.txt): either "<file> <synset-or-index>" per
line, or one label per line in sorted-file-name order (devkit style; an integer is a
1-based index into `--synsets`, default the sorted train synsets). Class names come
from SRC/synset_words.txt ("<synset> <name>") or `--class-names`.

Every image is rescaled so its shorter side is `scale_size` (`--scale-size`,
256 in the paper), cut to the central square and written as RGB JPEG (layout in
`prepared_tree.py`). Then the mean image and RGB PCA are computed over the *prepared*
training pixels (`stats.py`), and whether mirroring keeps an image's class
(`mirror_check.py`, DST/mirror_check.json; it decides the default flips).
Inputs that are PNG/CMYK/grayscale are converted; zero-byte, truncated
and non-image inputs are rejected; both are listed with the reason in
DST/prepare_report.json. An input whose header gives more than
`max_image_pixels` pixels (`--max-image-pixels`, default 100 megapixels) is
rejected before it is decoded. Progress (a tqdm line with rate and ETA) goes to
stderr. Re-running finishes an interrupted job: inputs already recorded in
DST/prepare_journal.jsonl (whose output exists) are not redone.

What is read stays inside SRC: a symlink is followed only when its target is
inside SRC (a class folder linked to /proc/self is not), and only directories
and regular files are used. Every entry passed over (hidden, a symlink that
leaves SRC, is broken or loops, a FIFO, socket or device, a folder inside a
class folder) is listed under "skipped" in the report with its reason.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from alexserve.config import PAPER_SCALE_SIZE, load_config, paper_scale_size
from alexserve.data.imageops import DEFAULT_MAX_IMAGE_PIXELS, BadImage, load_rgb, rescale_center_crop
from alexserve.data.mirror_check import MIRROR_CHECK_FILE, MirrorAccumulator
from alexserve.data.prepare_inputs import Task, discover
from alexserve.data.prepared_tree import (
    CLASSES_FILE,
    JOURNAL_FILE,
    REPORT_FILE,
    STATS_FILE,
    ClassInfo,
    DatasetError,
    atomic_write_text,
    write_class_index,
)
from alexserve.data.stats import StatsAccumulator
from alexserve.durable import write_atomically


def _read_class_names(path: Path | None) -> dict[str, str]:
    if path is None or not path.is_file():
        return {}
    names = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.strip().split(maxsplit=1)
        if parts:
            names[parts[0]] = parts[1] if len(parts) > 1 else parts[0]
    return names


# ---------------------------------------------------------------- per-file work (runs in worker processes)


def convert_one(task: Task, scale_size: int, quality: int, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> dict:
    """Prepare one input; never raises. Returns the journal record."""
    record = {"src": task.src, "dst": task.dst, "split": task.split, "synset": task.synset}
    try:
        loaded = load_rgb(Path(task.src), draft_size=(scale_size, scale_size), max_pixels=max_pixels)
        # draft() never decodes below the requested size; a smaller image is upscaled, as the paper's rule implies.
        out = rescale_center_crop(loaded.image, scale_size)
        buf = io.BytesIO()
        out.save(buf, "JPEG", quality=quality)
        Path(task.dst).parent.mkdir(parents=True, exist_ok=True)
        write_atomically(Path(task.dst), buf.getvalue(), sync_dir=False)
        record["status"] = "converted" if loaded.conversions else "ok"
        if loaded.conversions:
            record["reason"] = "; ".join(loaded.conversions)
    except BadImage as err:
        record.update(status="rejected", reason=str(err))
    except Exception as err:  # noqa: BLE001 - one file must never end the run; the report names it
        record.update(status="rejected", reason=f"unexpected error: {type(err).__name__}: {err}")
    return record


def _convert_star(args: tuple[Task, int, int, int]) -> dict:
    return convert_one(*args)


def accumulate_stats(paths: list[str], scale_size: int) -> tuple[StatsAccumulator, MirrorAccumulator]:
    """The mean/PCA sums and the mirror check's sums of prepared training images (DST/train/<synset>/<file>)."""
    acc, mirror = StatsAccumulator(scale_size), MirrorAccumulator()
    for p in paths:
        with Image.open(p) as img:
            arr = np.asarray(img.convert("RGB"))
        if arr.shape != (scale_size, scale_size, 3):
            raise DatasetError(
                f"{p}: prepared image is {arr.shape[1]}x{arr.shape[0]}, expected {scale_size}x{scale_size}"
            )
        acc.add(arr)
        mirror.add(Path(p).parent.name, p, arr)
    return acc, mirror


def _stats_star(args: tuple[list[str], int]) -> tuple[StatsAccumulator, MirrorAccumulator]:
    return accumulate_stats(*args)


# ---------------------------------------------------------------- driver


# tqdm's line on stderr, with rate and time left; "ETA" as the hand-made line it replaced said.
PROGRESS_FORMAT = "{desc}: {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} {rate_fmt} ETA {remaining}{postfix}"


def _progress(label: str, total: int) -> tqdm:
    return tqdm(
        total=total,
        desc=label,
        unit=" images",
        file=sys.stderr,
        bar_format=PROGRESS_FORMAT,
        mininterval=0.5,
        disable=total == 0,  # nothing left to do (a finished job re-run): no empty bar
    )


def _read_journal(path: Path) -> dict[str, dict]:
    records: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                records[rec["src"]] = rec
            except (ValueError, KeyError):
                continue  # a line torn by an interrupted run; that input is simply redone
    return records


def scale_size_for(config: Path | None) -> int:
    """The scale a job trains at: its data.scale_size, or 256:224 of its model.input_size; 256 without a job.

    Raises ConfigError naming the file and every bad field.
    """
    if config is None:
        return PAPER_SCALE_SIZE
    job = load_config(config)
    return job.data.scale_size or paper_scale_size(job.model.input_size)


def prepare(
    src: Path,
    dst: Path,
    *,
    scale_size: int = PAPER_SCALE_SIZE,
    workers: int | None = None,
    quality: int = 90,
    val_labels: Path | None = None,
    synsets_file: Path | None = None,
    class_names: Path | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> dict:
    """Prepare SRC into DST; returns the summary also written into the report."""
    src, dst = Path(src), Path(dst)
    workers = workers or os.cpu_count() or 1
    tasks, synsets, skipped = discover(src, dst, val_labels, synsets_file)
    dst.mkdir(parents=True, exist_ok=True)
    journal_path = dst / JOURNAL_FILE
    journal = _read_journal(journal_path)

    # A finished input is skipped only if its record matches this plan and, when it produced a file, the file exists.
    def finished(t: Task) -> bool:
        rec = journal.get(t.src)
        if rec is None or rec.get("dst") != t.dst:
            return False
        return rec["status"] == "rejected" or Path(t.dst).is_file()

    todo = [t for t in tasks if not finished(t)]
    records = {t.src: journal[t.src] for t in tasks if finished(t)}
    if records:
        print(f"prepare: {len(records)} of {len(tasks)} inputs already done, resuming", file=sys.stderr)
    ctx = mp.get_context("spawn" if sys.platform == "darwin" else "fork")
    with ctx.Pool(workers) as pool, open(journal_path, "a") as jf:
        bad = 0
        with _progress("prepare: images", len(todo)) as progress:
            for rec in pool.imap_unordered(
                _convert_star, [(t, scale_size, quality, max_image_pixels) for t in todo], chunksize=8
            ):
                jf.write(json.dumps(rec) + "\n")
                jf.flush()  # flushed per file: an interruption loses at most the files in flight
                records[rec["src"]] = rec
                bad += rec["status"] == "rejected"
                progress.set_postfix_str(f"rejected {bad}", refresh=False)
                progress.update()

        train_out = sorted(r["dst"] for r in records.values() if r["split"] == "train" and r["status"] != "rejected")
        chunks = [train_out[i :: workers * 4] for i in range(workers * 4)]
        chunks = [c for c in chunks if c]
        total, mirror = StatsAccumulator(scale_size), MirrorAccumulator()
        with _progress("prepare: mean/PCA", len(train_out)) as progress:
            for acc, mirror_part in pool.imap_unordered(_stats_star, [(c, scale_size) for c in chunks]):
                total.merge(acc)
                mirror.merge(mirror_part)
                progress.update(acc.num_images)
    stats = total.finish()
    stats.save(dst / STATS_FILE)
    mirror_check = mirror.finish()
    mirror_check.save(dst / MIRROR_CHECK_FILE)

    names = _read_class_names(class_names or src / "synset_words.txt")
    write_class_index(dst / CLASSES_FILE, [ClassInfo(i, s, names.get(s, s)) for i, s in enumerate(synsets)])

    ordered = [records[t.src] for t in tasks]
    summary = {
        "src": str(src),
        "dst": str(dst),
        "scale_size": scale_size,
        "inputs": len(ordered),
        "ok": sum(r["status"] == "ok" for r in ordered),
        "converted": [r for r in ordered if r["status"] == "converted"],
        "rejected": [r for r in ordered if r["status"] == "rejected"],
        "skipped": skipped,
        "classes": len(synsets),
        "train_images": stats.num_images,
        "mirroring_keeps_class": mirror_check.mirroring_keeps_class,
        "val_images": sum(r["split"] == "val" and r["status"] != "rejected" for r in ordered),
    }
    atomic_write_text(dst / REPORT_FILE, json.dumps(summary, indent=1) + "\n")
    return summary
