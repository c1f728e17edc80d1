"""Per-epoch training history: a JSON-lines file and a plot regenerated from it.

`run_dir/history.jsonl` gets one JSON object per epoch (`EpochRecord`). Each
line is written with a single `write`, then flushed and fsynced, so a reader
(`tail -f`, `read_history`, a notebook) sees whole lines while training runs,
and a crash can at worst leave one torn last line, which readers skip and the
next `History` opened on the directory cuts off before appending.

Only one process writes the history (rank 0); the others must not open it.

Whose history: every line records the supervisor job that wrote it (`job_id`,
from ALEXSERVE_JOB_ID; null for a worker run by hand, and absent in histories
from before identities). A `History` opened for a job refuses (`HistoryError`,
naming the file and both identities) a file holding any line it cannot
attribute to that job, before cutting, rewinding or appending anything: a job
never truncates a history it did not write. A `History` without a job (a hand
run) keeps the old freedom and takes over whatever is there.

`plot(run_dir)` redraws `run_dir/history.png` (loss; top-1/top-5 error, train
and validation, centre and 10-crop; learning rate on a log scale, all against
epoch) and replaces the old image atomically, so an image viewer never shows a
half-written file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alexserve.durable import fsync_dir, write_atomically, write_through

HISTORY_FILE = "history.jsonl"
PLOT_FILE = "history.png"


class HistoryError(ValueError):
    """A history file that cannot be read; the message names the file and the line."""


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch of training produced. Errors are fractions in 0..1."""

    epoch: int  # 1-based: the epoch just finished
    step: int  # optimizer steps done since the start of training, at the end of this epoch
    train_loss: float  # mean cross-entropy over the epoch's training batches
    train_top1_error: float  # on the augmented training batches, with dropout active
    val_top1_error: float  # centre crop
    val_top5_error: float  # centre crop
    val_top1_error_10crop: float | None  # None when 10-crop evaluation was skipped this epoch
    val_top5_error_10crop: float | None
    lr: float  # learning rate used during this epoch
    epoch_seconds: float  # wall-clock time of the epoch (training + validation)
    # Centre-crop top-1 accuracy below twice chance (train/divergence.py: near_chance): the net has not learned.
    # None in histories written before the field existed (their class count is not in the record).
    near_chance: bool | None = None
    # The supervisor job that wrote the line (ALEXSERVE_JOB_ID); None for a hand run or an older history.
    job_id: str | None = None
    timestamp: float = dataclasses.field(default_factory=time.time)  # Unix time the line was written

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), allow_nan=True, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        # Fields with a default may be absent: older histories were written without them.
        optional = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        }
        missing = names - set(data) - optional
        if missing:
            raise ValueError(f"missing fields {sorted(missing)}")
        # Unknown keys are ignored so an older reader can read a newer history.
        return cls(**{k: v for k, v in data.items() if k in names})


class History:
    """Appends `EpochRecord`s to `run_dir/history.jsonl` (rank 0 only), stamped with `job_id`."""

    def __init__(self, run_dir: Path, job_id: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / HISTORY_FILE
        self.job_id = job_id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if job_id is not None:
            _check_owner(self.path, job_id)  # before anything is cut or rewritten
        _cut_torn_tail(self.path)

    def append(self, record: EpochRecord) -> None:
        record = dataclasses.replace(record, job_id=self.job_id)
        line = (record.to_json() + "\n").encode()
        created = not self.path.exists()
        # O_APPEND + one write: the line lands whole at the end or (crash) torn at the very end.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.run_dir)  # the new directory entry must survive a power loss too

    def records(self) -> list[EpochRecord]:
        return read_history(self.run_dir)

    def rewind(self, last_epoch: int) -> None:
        """Drops records after `last_epoch`, for a resume from the checkpoint at that epoch's end.

        Without this, epochs run after the checkpoint and before a crash would
        appear twice once the resumed run redoes them.
        """
        kept = [r for r in _read_records(self.path) if r.epoch <= last_epoch]
        text = "".join(r.to_json() + "\n" for r in kept)
        write_atomically(self.path, text.encode())


def _check_owner(path: Path, job_id: str) -> None:
    """Raises HistoryError unless every line of the history at `path` (torn last line included) is `job_id`'s."""
    if not path.exists():
        return
    lines = path.read_bytes().split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    for number, raw in enumerate(complete, start=1):
        if not raw.strip():
            continue
        writer = _parse_line(path, number, raw).job_id
        if writer != job_id:
            raise HistoryError(_foreign_message(path, number, writer, job_id))
    # A torn last line cannot be parsed; it is this job's only if its own identity is in the part that was written.
    if tail.strip() and f'"job_id": {json.dumps(job_id)},'.encode() not in tail:
        raise HistoryError(
            f"{path}:{len(complete) + 1}: a torn last line that does not show job {job_id!r} wrote it; "
            "a job never cuts a history it did not write: give this job a folder of its own"
        )


def _foreign_message(path: Path, number: int, writer: str | None, job_id: str) -> str:
    who = f"job {writer!r}" if writer is not None else "a run without a job identity (by hand, or older)"
    return (
        f"{path}:{number}: written by {who}, not by this job {job_id!r}; a job never appends to or truncates "
        "a history it did not write: give this job a folder of its own"
    )


def _cut_torn_tail(path: Path) -> None:
    """Truncates a last line without its newline (crash mid-write) so the next append starts clean."""
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1  # 0 when the only line is torn
    with open(path, "r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())


def _read_records(path: Path) -> list[EpochRecord]:
    """Records in file order. A torn last line is skipped; a bad line elsewhere is an error."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    # After split, a complete file ends with an empty string; anything else there is a torn line.
    complete, tail = lines[:-1], lines[-1]
    records = []
    for number, raw in enumerate(complete, start=1):
        if not raw.strip():
            continue
        records.append(_parse_line(path, number, raw))
    if tail.strip():
        try:
            records.append(_parse_line(path, len(complete) + 1, tail))
        except HistoryError:
            pass  # torn by a crash mid-write: the epoch is redone after resume anyway
    return records


def _parse_line(path: Path, number: int, raw: bytes) -> EpochRecord:
    try:
        return EpochRecord.from_dict(json.loads(raw))
    except (ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise HistoryError(f"{path}:{number}: not a history record: {err}") from None


def read_history(run_dir: Path) -> list[EpochRecord]:
    """One record per epoch, in epoch order.

    Where an epoch appears twice (a resumed run redid it), the later line wins.
    """
    by_epoch: dict[int, EpochRecord] = {}
    for record in _read_records(Path(run_dir) / HISTORY_FILE):
        by_epoch[record.epoch] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def _series(records: list[EpochRecord], field: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of one field, leaving out epochs where it is missing or not finite."""
    points = [(r.epoch, getattr(r, field)) for r in records]
    kept = [(e, v) for e, v in points if v is not None and math.isfinite(v)]
    return [e for e, _ in kept], [v for _, v in kept]


def _draw(records: list[EpochRecord]):
    # The object-oriented API with an explicit Agg canvas: no pyplot global
    # state, no GUI backend chosen from the environment, safe in a worker.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, err_ax, lr_ax = fig.subplots(1, 3)

    loss_ax.plot(*_series(records, "train_loss"), marker="o", label="train")
    loss_ax.set(title="Training loss", xlabel="epoch", ylabel="cross-entropy")

    curves = [
        ("train_top1_error", "train top-1", "C0", "-"),
        ("val_top1_error", "val top-1 (centre)", "C1", "-"),
        ("val_top5_error", "val top-5 (centre)", "C2", "-"),
        ("val_top1_error_10crop", "val top-1 (10-crop)", "C1", "--"),
        ("val_top5_error_10crop", "val top-5 (10-crop)", "C2", "--"),
    ]
    for field, label, color, style in curves:
        epochs, values = _series(records, field)
        if epochs:
            err_ax.plot(epochs, values, linestyle=style, color=color, marker="o", markersize=3, label=label)
    err_ax.set(title="Error", xlabel="epoch", ylabel="error rate", ylim=(0.0, 1.0))
    err_ax.legend(fontsize="small")

    lr_ax.step(*_series(records, "lr"), where="post", marker="o")
    lr_ax.set(title="Learning rate", xlabel="epoch", yscale="log")

    for ax in (loss_ax, err_ax, lr_ax):
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def plot(run_dir: Path) -> Path | None:
    """Redraws `run_dir/history.png` from the history; returns its path, or None when there is no epoch yet."""
    run_dir = Path(run_dir)
    records = read_history(run_dir)
    if not records:
        return None
    fig = _draw(records)
    out = run_dir / PLOT_FILE
    write_through(out, lambda f: fig.savefig(f, format="png"))
    return out
