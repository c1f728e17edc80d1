"""History: JSON lines that round-trip and survive a torn last line; a PNG plot regenerated atomically."""

from __future__ import annotations

import dataclasses
import json
import math
import struct

import pytest

from alexserve.train.history import HISTORY_FILE, PLOT_FILE, EpochRecord, History, HistoryError, plot, read_history


def _record(epoch: int, tenfold: bool = True) -> EpochRecord:
    return EpochRecord(
        epoch=epoch,
        step=epoch * 32,
        train_loss=2.3 / epoch,
        train_top1_error=0.9 / epoch,
        val_top1_error=0.8 / epoch,
        val_top5_error=0.4 / epoch,
        val_top1_error_10crop=0.75 / epoch if tenfold else None,
        val_top5_error_10crop=0.35 / epoch if tenfold else None,
        lr=0.01 if epoch < 3 else 0.001,
        epoch_seconds=12.5,
    )


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_jsonl_round_trips_one_line_per_epoch(tmp_path):
    history = History(tmp_path)
    records = [_record(e, tenfold=e != 2) for e in range(1, 5)]
    for r in records:
        history.append(r)
    lines = (tmp_path / HISTORY_FILE).read_text().splitlines()
    assert len(lines) == 4
    assert json.loads(lines[1])["val_top1_error_10crop"] is None
    assert read_history(tmp_path) == records
    assert set(json.loads(lines[0])) == {f.name for f in dataclasses.fields(EpochRecord)}


def test_torn_last_line_is_skipped_then_cut_before_the_next_append(tmp_path):
    history = History(tmp_path)
    history.append(_record(1))
    history.append(_record(2))
    path = tmp_path / HISTORY_FILE
    whole = _record(3).to_json()
    with open(path, "a") as f:
        f.write(whole[: len(whole) // 2])  # a crash in the middle of epoch 3's line
    assert [r.epoch for r in read_history(tmp_path)] == [1, 2]

    reopened = History(tmp_path)  # what a resumed run does
    reopened.append(_record(3))
    assert [r.epoch for r in read_history(tmp_path)] == [1, 2, 3]
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_a_bad_line_in_the_middle_is_an_error_naming_file_and_line(tmp_path):
    history = History(tmp_path)
    history.append(_record(1))
    with open(tmp_path / HISTORY_FILE, "a") as f:
        f.write("{not json\n")
    history.append(_record(2))
    with pytest.raises(HistoryError, match=rf"{HISTORY_FILE}:2"):
        read_history(tmp_path)


def test_rewind_drops_epochs_after_the_resumed_checkpoint_and_reruns_replace(tmp_path):
    history = History(tmp_path)
    for e in (1, 2, 3):
        history.append(_record(e))
    history.rewind(2)
    assert [r.epoch for r in read_history(tmp_path)] == [1, 2]
    # Without a rewind, a redone epoch's later line wins.
    history.append(dataclasses.replace(_record(2), train_loss=9.0))
    assert [r.train_loss for r in read_history(tmp_path)] == [_record(1).train_loss, 9.0]


def test_plot_writes_a_sane_png_and_replaces_it(tmp_path):
    assert plot(tmp_path) is None  # nothing to draw yet, nothing written
    assert not (tmp_path / PLOT_FILE).exists()
    history = History(tmp_path)
    for e in range(1, 4):
        history.append(_record(e, tenfold=e != 2))
    history.append(dataclasses.replace(_record(4), train_loss=math.nan))  # a diverged epoch must not break the plot
    out = plot(tmp_path)
    assert out == tmp_path / PLOT_FILE
    data = out.read_bytes()
    width, height = _png_size(data)
    assert 600 <= width <= 3000 and 200 <= height <= 1500
    assert 10_000 < len(data) < 2_000_000  # axes, curves and labels, not an empty canvas
    first_inode = out.stat().st_ino

    history.append(_record(5))
    plot(tmp_path)
    assert out.stat().st_ino != first_inode  # a new file renamed over the old one, not rewritten in place
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries left


def test_plot_decodes_as_an_image(tmp_path):
    import matplotlib.image

    history = History(tmp_path)
    for e in range(1, 3):
        history.append(_record(e))
    pixels = matplotlib.image.imread(plot(tmp_path))
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    assert pixels[..., :3].std() > 0.05  # something was drawn


def test_a_job_never_opens_a_history_it_did_not_write(tmp_path):
    """Issue 13: a second job in the first one's folder emptied its history.jsonl (rewind to epoch 0)."""
    first = History(tmp_path, job_id="job-1")
    first.append(_record(1))
    first.append(_record(2))
    path = tmp_path / HISTORY_FILE
    before = path.read_bytes()
    assert all(json.loads(line)["job_id"] == "job-1" for line in before.decode().splitlines())
    with pytest.raises(HistoryError, match=r"history.jsonl:1: written by job 'job-1', not by this job 'job-2'"):
        History(tmp_path, job_id="job-2")
    assert path.read_bytes() == before
    History(tmp_path, job_id="job-1").rewind(1)  # its own: a resume from epoch 1 may cut epoch 2
    assert [r.epoch for r in read_history(tmp_path)] == [1]


def test_a_job_refuses_a_history_without_identity_and_a_hand_run_takes_any(tmp_path):
    History(tmp_path).append(_record(1))  # a hand run (or a history from before identities)
    path = tmp_path / HISTORY_FILE
    before = path.read_bytes()
    with pytest.raises(HistoryError, match="a run without a job identity"):
        History(tmp_path, job_id="job-1")
    assert path.read_bytes() == before
    History(tmp_path, job_id=None).rewind(0)  # a hand run keeps its freedom
    assert read_history(tmp_path) == []


def test_a_torn_last_line_is_cut_only_when_it_shows_the_jobs_identity(tmp_path):
    path = tmp_path / HISTORY_FILE
    foreign = dataclasses.replace(_record(1), job_id="job-1").to_json()
    path.write_text(foreign[: len(foreign) - 20])  # torn, but far enough to show who wrote it
    with pytest.raises(HistoryError, match="torn last line that does not show job 'job-2'"):
        History(tmp_path, job_id="job-2")
    History(tmp_path, job_id="job-1").append(_record(1))
    assert [r.job_id for r in read_history(tmp_path)] == ["job-1"]
