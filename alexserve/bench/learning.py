"""Learning on real images: the two-process pair against one process and an SVM, on the UCI digits.

    python -m alexserve.bench.learning [--width 0.25 --input-size 64 --batch-size 64 --epochs 12]

One run, on one machine, one after the other on the same split (scikit-learn's
1,797 handwritten digits, written by `alexserve digits` as 64-pixel JPEGs, 80/20
stratified, and prepared at the paper's 256:224 ratio: scale 73 for 64-pixel
crops, in a temporary folder):

1. the product path: `torchrun --standalone --nproc_per_node=2 -m alexserve.worker`
   given only what a user sets (data, class count, width, input size, batch,
   epochs, run dir); every other field is the worker's default. Its figures come
   from RUN_DIR/pair/history.jsonl: the first epoch whose centre-crop validation
   top-1 error is <= --target (3%), the seconds to it (the sum of the epochs'
   `epoch_seconds`: training and validation), and the last epoch's error.
   Each rank gets half the cores.
2. the same net in one process: `AlexNetGrouped` on the same job (resolved by
   `alexserve.train.recipe.resolve_job`, as the worker resolves it), data
   source, initial weights, dropout masks, optimizer, warmup and plateau
   schedule, with every core; timed the same way (RUN_DIR/single/history.jsonl;
   bench/grouped_run.py).
3. scikit-learn's RBF SVC with standard scaling, default hyperparameters, on
   the same split: on the 8x8 originals (16 ink levels), and on the 64-pixel
   grey centre crops of the prepared images that the nets see (bench/svm_baseline.py).

Prints the table and the ratios pair/single of time to target, of training and
validation time, and of wall time; --out (default RUN_DIR/learning.json) keeps
the figures with the configuration and the machine. Wall time is the pair's
from launching torchrun to its exit (interpreters, imports, rendezvous,
checkpoints and plots included) and the single process's from resolving the
job to its last epoch (torch already imported, nothing checkpointed): the
time to target is the like-for-like figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from alexserve.bench.grouped_run import train_grouped
from alexserve.bench.svm_baseline import SvmFigures, svm_on_originals, svm_on_prepared
from alexserve.config import load_config, paper_scale_size
from alexserve.train.history import EpochRecord, History, read_history

VAL_FRACTION = 0.2  # alexserve digits' defaults: the split every tool on the digits shares
SPLIT_SEED = 0
DIGITS_SIZE = 64
PAIR_TIMEOUT_SECONDS = 3600


@dataclass
class TrainerFigures:
    """What one way of training reached; times in seconds."""

    name: str
    epochs_run: int
    target_epoch: int | None  # first epoch at or below the target error; None: never
    seconds_to_target: float | None  # sum of epoch_seconds up to and including target_epoch
    final_top1_error: float  # centre crop, last epoch
    final_top1_error_10crop: float | None
    best_top1_error: float
    train_eval_seconds: float  # sum of epoch_seconds over every epoch
    wall_seconds: float  # start to end, start-up and checkpoints included
    errors_per_epoch: list[float] = field(default_factory=list)


def time_to_target(records: list[EpochRecord], target: float) -> tuple[int, float] | None:
    """(epoch, cumulative epoch_seconds) of the first epoch whose centre-crop val top-1 error is <= target.

    None if no epoch reached it.
    """
    seconds = 0.0
    for record in sorted(records, key=lambda r: r.epoch):
        seconds += record.epoch_seconds
        if record.val_top1_error <= target:  # a NaN error never reaches it
            return record.epoch, seconds
    return None


def trainer_figures(name: str, records: list[EpochRecord], target: float, wall_seconds: float) -> TrainerFigures:
    if not records:
        raise SystemExit(f"{name}: no epoch finished; nothing to compare")
    reached = time_to_target(records, target)
    last = max(records, key=lambda r: r.epoch)
    return TrainerFigures(
        name=name,
        epochs_run=len(records),
        target_epoch=reached[0] if reached else None,
        seconds_to_target=reached[1] if reached else None,
        final_top1_error=last.val_top1_error,
        final_top1_error_10crop=last.val_top1_error_10crop,
        best_top1_error=min(r.val_top1_error for r in records),
        train_eval_seconds=sum(r.epoch_seconds for r in records),
        wall_seconds=wall_seconds,
        errors_per_epoch=[r.val_top1_error for r in sorted(records, key=lambda r: r.epoch)],
    )


# ---- the data


def make_digits(root: Path, input_size: int, workers: int) -> Path:
    """Writes the digits and prepares them for `input_size` crops; returns the prepared tree."""
    from alexserve.data.digits import write_digits
    from alexserve.data.prepare import prepare

    write_digits(root / "digits", size=DIGITS_SIZE, val_fraction=VAL_FRACTION, seed=SPLIT_SEED)
    prepare(root / "digits", root / "prepared", scale_size=paper_scale_size(input_size), workers=workers)
    return root / "prepared"


def user_settings(args: argparse.Namespace, prepared: Path, run_dir: Path) -> list[str]:
    """The only fields set: what a user sets for a first try. The rest is the worker's default job."""
    return [
        "data.source=folder",
        f"data.train_dir={prepared / 'train'}",
        f"data.scale_size={paper_scale_size(args.input_size)}",
        "model.num_classes=10",
        f"model.width={args.width}",
        f"model.input_size={args.input_size}",
        f"train.batch_size={args.batch_size}",
        f"train.num_epochs={args.epochs}",
        f"train.run_dir={run_dir}",
    ]


# ---- 1. the two-process pair, as a user runs it


def run_pair(settings: list[str], run_dir: Path, target: float) -> TrainerFigures:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "alexserve.worker",
    ]
    for setting in settings:
        command += ["--set", setting]
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "worker.log"
    print(f"two-process pair: torchrun ... -m alexserve.worker (log: {log_path})", file=sys.stderr, flush=True)
    began = time.perf_counter()
    with open(log_path, "w") as log:
        # Its own session, so a hung run is ended with torchrun's workers, not just torchrun.
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        watchdog = threading.Timer(PAIR_TIMEOUT_SECONDS, os.killpg, (proc.pid, signal.SIGKILL))
        watchdog.start()
        try:
            for line in proc.stdout:
                log.write(line)
                if " done: " in line or "final:" in line or "diverged" in line or "WARNING" in line:
                    print(f"  pair: {line.rstrip()}", file=sys.stderr, flush=True)
            code = proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    wall = time.perf_counter() - began
    if code != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        why = f"killed after {PAIR_TIMEOUT_SECONDS} s" if wall >= PAIR_TIMEOUT_SECONDS else f"exit code {code}"
        raise SystemExit(f"the two-process run failed ({why}); the end of {log_path}:\n{tail}")
    return trainer_figures("two-process pair", read_history(run_dir), target, wall)


# ---- 2. the same net in one process


def run_single(settings: list[str], run_dir: Path, target: float, threads: int) -> tuple[TrainerFigures, list[str]]:
    """The grouped model trained like the towers (train/loop.py) on `threads` threads.

    Also returns the job's departures from the paper.
    """
    from alexserve.train.recipe import resolve_job

    began = time.perf_counter()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        resolved = resolve_job(load_config(None, settings))
        records = train_grouped(resolved.job, log=lambda line: print(f"  single: {line}", file=sys.stderr, flush=True))
    finally:
        torch.set_num_threads(threads_before)
    wall = time.perf_counter() - began
    history = History(run_dir)  # written after the clock stopped, like the pair's file for reading it the same way
    for record in records:
        history.append(record)
    return trainer_figures("single process", records, target, wall), resolved.departures


# ---- the report


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def report(
    pair: TrainerFigures, single: TrainerFigures, svms: list[SvmFigures], target: float
) -> dict[str, float | None]:
    """Prints the table; returns the ratios pair / single."""

    def cell(value: float | None, fmt: str) -> str:
        return format(value, fmt) if value is not None else "never"

    print(
        f"{'':<18}{'s to ' + format(target, '.0%'):>9}{'epoch':>7}{'final err':>11}{'10-crop':>9}"
        f"{'best err':>10}{'train+val s':>13}{'wall s':>9}"
    )
    for t in (pair, single):
        ten = f"{t.final_top1_error_10crop:.4f}" if t.final_top1_error_10crop is not None else "-"
        print(
            f"{t.name:<18}{cell(t.seconds_to_target, '.1f'):>9}{cell(t.target_epoch, 'd'):>7}"
            f"{t.final_top1_error:>11.4f}{ten:>9}{t.best_top1_error:>10.4f}{t.train_eval_seconds:>13.1f}{t.wall_seconds:>9.1f}"
        )
    for s in svms:
        print(
            f"{s.name:<34}{s.top1_error:>11.4f}   fit {s.fit_seconds:.2f} s, "
            f"predict {s.predict_seconds:.2f} s, on {s.features}"
        )
    for t in (pair, single):
        print(f"{t.name} val top-1 error per epoch: {' '.join(f'{e:.3f}' for e in t.errors_per_epoch)}")
    ratios = {
        "time_to_target": ratio(pair.seconds_to_target, single.seconds_to_target),
        "train_eval_seconds": ratio(pair.train_eval_seconds, single.train_eval_seconds),
        "wall_seconds": ratio(pair.wall_seconds, single.wall_seconds),
        "train_eval_seconds_per_epoch": ratio(
            pair.train_eval_seconds / pair.epochs_run, single.train_eval_seconds / single.epochs_run
        ),
    }
    shown = {k: (f"{v:.2f}x" if v is not None else "n/a (not reached by both)") for k, v in ratios.items()}
    print(
        f"pair / single: time to {target:.0%} {shown['time_to_target']}, "
        f"training+validation {shown['train_eval_seconds']} ({shown['train_eval_seconds_per_epoch']} per epoch), "
        f"wall {shown['wall_seconds']}"
    )
    return ratios


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m alexserve.bench.learning",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--width", type=float, default=0.25, help="model.width (default 0.25)")
    parser.add_argument("--epochs", type=int, default=12, help="train.num_epochs (default 12)")
    parser.add_argument(
        "--input-size",
        type=int,
        default=64,
        help="model.input_size; the digits are prepared at 256:224 of it (default 64)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="train.batch_size (default 64)")
    parser.add_argument("--target", type=float, default=0.03, help="validation top-1 error to time (default 0.03)")
    parser.add_argument("--single-threads", type=int, help="torch threads of the single process (default: every core)")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path("runs/bench-learning"),
        help="the runs go to RUN_DIR/pair and RUN_DIR/single, replaced (default runs/bench-learning)",
    )
    parser.add_argument(
        "--out", type=Path, help="figures, configuration and machine as JSON (default RUN_DIR/learning.json)"
    )
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or not 0.0 < args.target < 1.0:
        parser.error("--epochs and --batch-size must be >= 1 and --target between 0 and 1")
    if args.single_threads is not None and args.single_threads < 1:
        parser.error(f"--single-threads must be >= 1, got {args.single_threads}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cores = os.cpu_count() or 1
    single_threads = args.single_threads or cores
    out = args.out or args.run_dir / "learning.json"
    for part in ("pair", "single"):
        shutil.rmtree(args.run_dir / part, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="alexserve-bench-learning-") as tmp:
        print(f"writing and preparing the digits under {tmp} ...", file=sys.stderr, flush=True)
        prepared = make_digits(Path(tmp), args.input_size, workers=cores)
        num_train = sum(1 for _ in (prepared / "train").rglob("*.JPEG"))
        num_val = sum(1 for _ in (prepared / "val").rglob("*.JPEG"))
        svms = [svm_on_originals(VAL_FRACTION, SPLIT_SEED), svm_on_prepared(prepared, args.input_size)]
        pair = run_pair(user_settings(args, prepared, args.run_dir / "pair"), args.run_dir / "pair", args.target)
        single_dir = args.run_dir / "single"
        single, departures = run_single(
            user_settings(args, prepared, single_dir), single_dir, args.target, single_threads
        )
    print(
        f"digits: {num_train} training, {num_val} validation images, 10 classes, "
        f"prepared at {paper_scale_size(args.input_size)} px; "
        f"width {args.width}, input {args.input_size}, batch {args.batch_size}, {args.epochs} epochs; "
        f"{cores} CPU cores (pair: {max(1, cores // 2)} torch threads per rank, single: {single_threads}), "
        f"torch {torch.__version__}"
    )
    for line in departures:
        print(f"departure: {line}")
    ratios = report(pair, single, svms, args.target)
    figures = {
        "target_top1_error": args.target,
        "pair": asdict(pair),
        "single": asdict(single),
        "svm": [asdict(s) for s in svms],
        "pair_over_single": ratios,
        "departures": departures,
        "data": {
            "set": "UCI digits (sklearn.datasets.load_digits)",
            "train_images": num_train,
            "val_images": num_val,
            "image_size": DIGITS_SIZE,
            "scale_size": paper_scale_size(args.input_size),
            "val_fraction": VAL_FRACTION,
            "split_seed": SPLIT_SEED,
        },
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "user_settings": user_settings(args, Path("PREPARED"), args.run_dir / "pair"),
        "machine": {
            "cpus": cores,
            "pair_threads_per_rank": max(1, cores // 2),
            "single_threads": single_threads,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1) + "\n")
    print(f"figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
