"""Loader benchmark: the DALI CPU loader against the PIL + DataLoader peer doing the same work.

    python -m alexserve.bench.loader                          # synth + prepare a temporary set, 2 workers
    python -m alexserve.bench.loader --data data/synth-prepared --workers 2 --batch-size 64 --repeats 3

Both loaders read the same prepared 256x256 JPEGs, follow the same plan (same
files, crops, flips, lighting) and produce the same float32 NCHW batches on the CPU
with the same number of workers (DALI threads vs DataLoader processes). It prints
images/s per loader (mean and spread over --repeats epochs, after one warm-up
epoch) and the DALI/PIL ratio, then trains the grouped model for a few steps on
the DALI loader and prints the share of step time spent waiting for data;
--out saves the configuration and results as JSON.

`measure_throughput(source)` is the reusable part: images/s and wait time of any
TrainSource, e.g. inside a training loop's benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from alexserve.config import DataConfig, JobConfig, ModelConfig, TrainConfig
from alexserve.data.prepared_tree import CLASSES_FILE, read_class_index
from alexserve.data.source import TrainSource


@dataclass
class Throughput:
    images: int
    seconds: float
    images_per_second: float
    wait_seconds: float


def measure_throughput(source: TrainSource, *, epoch: int = 0, max_steps: int | None = None) -> Throughput:
    """Drain `source.batches(epoch)` (or its first max_steps) as fast as possible; the consumer does no work,
    so wait_seconds is the whole time the loader could not keep up."""
    wait0, images = source.wait_seconds_total, 0
    start = time.perf_counter()
    for step, (batch, _) in enumerate(source.batches(epoch)):
        images += batch.shape[0]
        if max_steps is not None and step + 1 >= max_steps:
            break
    seconds = time.perf_counter() - start
    return Throughput(images, seconds, images / seconds, source.wait_seconds_total - wait0)


def _job(data_dir: Path, loader: str, args) -> JobConfig:
    num_classes = len(read_class_index(data_dir / CLASSES_FILE))
    return JobConfig(
        model=ModelConfig(num_classes=num_classes, input_size=args.input_size),
        data=DataConfig(
            source="folder", train_dir=data_dir / "train", loader=loader, num_workers=args.workers, prefetch_batches=2
        ),
        train=TrainConfig(batch_size=args.batch_size, seed=0),
    )


def run(args) -> dict:
    from alexserve.data.factory import build_train_source

    results = {}
    # PIL first: its DataLoader forks worker processes, best done before DALI starts its threads.
    for loader in ("pil", "dali"):
        source = build_train_source(_job(args.data, loader, args), device=torch.device("cpu"))
        measure_throughput(source, epoch=0, max_steps=args.steps)  # warm-up: page cache, worker start, pipeline build
        runs = [measure_throughput(source, epoch=1 + r, max_steps=args.steps) for r in range(args.repeats)]
        source.close()
        rates = [r.images_per_second for r in runs]
        results[loader] = {
            "images_per_second_mean": statistics.mean(rates),
            "images_per_second_stdev": statistics.stdev(rates) if len(rates) > 1 else 0.0,
            "runs": [asdict(r) for r in runs],
        }
        print(
            f"{loader:>4}: {statistics.mean(rates):8.1f} images/s "
            f"(+- {results[loader]['images_per_second_stdev']:.1f}, "
            f"{args.repeats} epochs of {runs[0].images} images, {args.workers} workers)",
            flush=True,
        )
    ratio = results["dali"]["images_per_second_mean"] / results["pil"]["images_per_second_mean"]
    print(f"DALI CPU / PIL DataLoader: {ratio:.2f}x")
    training = training_wait(args)
    print(
        f"training on the DALI loader (grouped model, width {args.train_width}, {training['steps']} steps): "
        f"{training['step_seconds_mean'] * 1e3:.0f} ms/step, "
        f"waiting for data {training['wait_fraction']:.1%} of step time"
    )
    return {"ratio_dali_over_pil": ratio, "results": results, "training": training}


def training_wait(args) -> dict:
    """Share of step time a CPU training run spends waiting for the DALI loader (the rest is the model's)."""
    from alexserve.data.factory import build_train_source
    from alexserve.model import AlexNetGrouped
    from alexserve.train.optimizer import PaperSGD
    from alexserve.train.recipe import resolve_job
    from alexserve.train.step import grouped_train_step

    job = _job(args.data, "dali", args)
    job.model = job.model.model_copy(update={"width": args.train_width})
    job = resolve_job(job).job
    model = AlexNetGrouped.from_seed(job.model, 0)
    optimizer = PaperSGD.from_config(model.parameters(), job.optim)
    source = build_train_source(job, device=torch.device("cpu"))
    steps, began, wait0 = 0, None, 0.0
    try:
        for images, labels in source.batches(0):
            if steps == 1:  # the first step includes the pipeline's start-up
                began, wait0 = time.perf_counter(), source.wait_seconds_total
            grouped_train_step(model, optimizer, images, labels, None)
            steps += 1
            if steps > args.train_steps:
                break
        if steps < 2:
            raise SystemExit(
                f"the prepared set has {source.steps_per_epoch} batch(es) per epoch: too few to time training"
            )
        elapsed = time.perf_counter() - began
        waited = source.wait_seconds_total - wait0
    finally:
        source.close()
    return {"steps": steps - 1, "step_seconds_mean": elapsed / (steps - 1), "wait_fraction": waited / elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alexserve.bench.loader", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="prepared tree (default: synth + prepare a temporary one)")
    parser.add_argument("--workers", type=int, default=2, help="DALI threads = DataLoader processes (default 2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=None, help="batches per measured epoch (default: whole epoch)")
    parser.add_argument("--repeats", type=int, default=3, help="measured epochs per loader (default 3)")
    parser.add_argument(
        "--synth-images", type=int, default=1280, help="training images when synthesising (default 1280)"
    )
    parser.add_argument(
        "--train-width", type=float, default=0.25, help="width of the model trained to measure data wait"
    )
    parser.add_argument("--train-steps", type=int, default=8, help="training steps for the data-wait measurement")
    parser.add_argument("--out", type=Path, help="write configuration and results here as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="alexserve-bench-") as tmp:
        if args.data is None:
            from alexserve.data.prepare import prepare
            from alexserve.data.synth import generate

            print(f"synthesising {args.synth_images} training images under {tmp} ...", file=sys.stderr)
            generate(
                Path(tmp) / "src",
                num_classes=10,
                train_per_class=max(1, args.synth_images // 10),
                val_per_class=0,
                seed=0,
            )
            prepare(Path(tmp) / "src", Path(tmp) / "prepared", workers=args.workers)
            args.data = Path(tmp) / "prepared"
        report = run(args)
    report["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
