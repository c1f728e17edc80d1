"""`python -m alexserve.bench.learning`, its parts in-process (the whole run, with -m slow, is in
tests/integration/test_bench_learning_full_run.py)."""

import math
from pathlib import Path

import pytest

from alexserve.bench import grouped_run, learning, svm_baseline
from alexserve.config import demo_config, load_config
from alexserve.train.history import EpochRecord, History, read_history


def record(epoch: int, error: float, seconds: float) -> EpochRecord:
    return EpochRecord(
        epoch=epoch,
        step=10 * epoch,
        train_loss=1.0,
        train_top1_error=0.5,
        val_top1_error=error,
        val_top5_error=0.0,
        val_top1_error_10crop=None,
        val_top5_error_10crop=None,
        lr=0.01,
        epoch_seconds=seconds,
    )


def test_time_to_target_is_the_sum_up_to_the_first_epoch_at_or_below_it():
    records = [record(1, 0.5, 10.0), record(2, 0.031, 5.0), record(3, 0.03, 4.0), record(4, 0.01, 3.0)]
    assert learning.time_to_target(records, 0.03) == (3, 19.0)
    assert learning.time_to_target(list(reversed(records)), 0.03) == (3, 19.0)  # epoch order, not file order
    assert learning.time_to_target(records, 0.001) is None
    assert learning.time_to_target([record(1, math.nan, 1.0), record(2, 0.02, 1.0)], 0.03) == (2, 2.0)


def test_figures_from_a_written_history(tmp_path: Path):
    history = History(tmp_path)
    for r in (record(1, 0.4, 3.0), record(2, 0.02, 2.0), record(3, 0.025, 2.5)):
        history.append(r)
    figures = learning.trainer_figures("pair", read_history(tmp_path), 0.03, wall_seconds=12.0)
    assert (figures.target_epoch, figures.seconds_to_target) == (2, 5.0)
    assert figures.final_top1_error == 0.025 and figures.best_top1_error == 0.02
    assert figures.train_eval_seconds == 7.5 and figures.epochs_run == 3 and figures.wall_seconds == 12.0
    assert figures.errors_per_epoch == [0.4, 0.02, 0.025]
    with pytest.raises(SystemExit, match="no epoch"):
        learning.trainer_figures("pair", [], 0.03, wall_seconds=1.0)


def test_the_pair_gets_only_user_level_settings(tmp_path: Path):
    """Everything but data, classes, width, input, batch, epochs and run dir is the worker's default job."""
    args = learning.parse_args(["--width", "0.5", "--epochs", "3", "--input-size", "80", "--batch-size", "32"])
    settings = learning.user_settings(args, tmp_path / "prepared", tmp_path / "run")
    assert sorted(s.split("=")[0] for s in settings) == sorted(
        [
            "data.source",
            "data.train_dir",
            "data.scale_size",
            "model.num_classes",
            "model.width",
            "model.input_size",
            "train.batch_size",
            "train.num_epochs",
            "train.run_dir",
        ]
    )
    job, default = load_config(None, settings), demo_config()
    assert (job.model.width, job.model.input_size, job.train.batch_size, job.train.num_epochs) == (0.5, 80, 32, 3)
    assert job.data.scale_size == 91  # the paper's 256:224
    assert job.optim == default.optim and job.dist == default.dist
    untouched = {"width", "input_size", "num_classes"}
    assert job.model.model_dump(exclude=untouched) == default.model.model_dump(exclude=untouched)


def test_svm_on_the_8x8_originals():
    pytest.importorskip("sklearn")
    svm = svm_baseline.svm_on_originals(learning.VAL_FRACTION, learning.SPLIT_SEED)
    assert svm.features == "8x8 originals"
    assert svm.top1_error < 0.05, "an RBF SVM classifies the digits to about 1-2% error"
    assert svm.fit_seconds > 0 and svm.predict_seconds > 0


def test_single_process_loop_warms_up_and_records_every_epoch():
    """The single-process loop on generated data: one record per epoch, the warmup ramp, finite errors."""
    from alexserve.train.recipe import resolve_job

    job = resolve_job(
        load_config(
            None,
            [
                "data.source=generated",
                "data.generated_train_images=96",
                "data.generated_val_images=32",
                "model.width=0.25",
                "model.input_size=64",
                "train.batch_size=32",
                "train.num_epochs=2",
            ],
        )
    ).job
    lines = []
    records = grouped_run.train_grouped(job, log=lines.append)
    assert [r.epoch for r in records] == [1, 2] and [r.step for r in records] == [3, 6]
    assert len(lines) == 2
    assert all(math.isfinite(r.train_loss) and 0.0 <= r.val_top1_error <= 1.0 for r in records)
    assert records[0].val_top1_error_10crop is not None  # ten crops every epoch, as the loop's default
    assert records[0].lr == pytest.approx(job.optim.learning_rate)  # warmup (one epoch) ends on the epoch's last step
    assert all(r.epoch_seconds > 0 for r in records)
