"""One GPU, one run: the grouped two-tower step against a plain AlexNet, and the DALI-fed step against model-only.

    python -m alexserve.bench.gpu                        # batch 128, fp32 and bf16, 20 timed steps each
    python -m alexserve.bench.gpu --data data/imagenet   # the end-to-end figure on a real prepared tree
    python -m alexserve.bench.gpu --device cpu --batch-size 8 --steps 2    # smoke mode, no GPU needed

For each precision (fp32; bf16 through `torch.autocast(device_type="cuda", dtype=torch.bfloat16)`):

- grouped / plain: the one-GPU form of the paper's net (`AlexNetGrouped`: conv2/4/5 with groups=2,
  LRN, shared dropout) against a plain single-tower AlexNet written here with torchvision's shapes
  (convs of 64, 192, 384, 256, 256 channels, fc 4096; no torchvision needed); the same SGD step
  (forward, cross-entropy, backward, the paper's update) on the same fixed batch;
- end-to-end / model-only: the grouped step fed by the DALI loader (decode, crop, flip, lighting on
  the GPU, a generated prepared tree unless --data) against the same step on a batch already on the GPU;
- images/s of each.

The pairs are measured in turn, --repeats times (ABAB...), and the median ratio is printed: the two
sides of a ratio always come from the same run on the same GPU. Times are CUDA events around all the
timed steps of a measurement, one synchronisation at its end. On CPU (smoke mode: a quarter-width net
on 64 pixels unless --width/--input-size say otherwise) the same code runs with wall-clock timing; its
figures say nothing about a GPU.
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
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from alexserve.config import ModelConfig
from alexserve.train.optimizer import PaperSGD

NO_CUDA_EXIT = 2
PIXEL_STD = 60.0  # the fixed batch stands for centred 0..255 pixels
NUM_CLASSES = 1000


class PlainAlexNet(nn.Module):
    """torchvision's single-tower AlexNet (its shapes, its layer order), scaled by `width`."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: float = 1.0, dropout: float = 0.5):
        super().__init__()
        c1, c2, c3, c4, c5 = (max(1, round(c * width)) for c in (64, 192, 384, 256, 256))
        fc = max(1, round(4096 * width))
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(c5 * 6 * 6, fc),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(fc, fc),
            nn.ReLU(inplace=True),
            nn.Linear(fc, num_classes),
        )

    def forward(self, images: torch.Tensor, dropout_seed: int | None = None) -> torch.Tensor:
        # dropout_seed: the grouped model's argument; nn.Dropout draws from the global generator instead.
        return self.classifier(torch.flatten(self.avgpool(self.features(images)), 1))


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def make_step(model: nn.Module, device: torch.device, precision: str) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One SGD step, the same for both models: forward and loss under autocast, backward, the paper's update.

    Nothing is read back to the host: the step enqueues GPU work and returns.
    """
    optimizer = PaperSGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    counter = iter(range(1, 1 << 62))

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            logits = model(images, next(counter))  # a fresh dropout seed each step, as in training
            loss = F.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()

    return step


class Timer:
    """Seconds over a block of GPU work: CUDA events on a GPU (one sync at the end), wall clock on CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def measure(self, run: Callable[[], None]) -> float:
        if self.device.type != "cuda":
            began = time.perf_counter()
            run()
            return time.perf_counter() - began
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(self.device)
        start.record()
        run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def fixed_batch(args, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.input_size, args.input_size, generator=g) * PIXEL_STD
    return images.to(device), torch.randint(0, NUM_CLASSES, (args.batch_size,), generator=g).to(device)


def model_config(args) -> ModelConfig:
    return ModelConfig(width=args.width, input_size=args.input_size, num_classes=NUM_CLASSES, pixel_std=PIXEL_STD)


def grouped_model(args, device: torch.device) -> nn.Module:
    from alexserve.model import AlexNetGrouped

    return AlexNetGrouped.from_seed(model_config(args), 0).to(device).train()


def images_per_second_on_fixed_batch(step, batch, args, timer: Timer) -> float:
    images, labels = batch
    for _ in range(args.warmup):
        step(images, labels)

    def run() -> None:
        for _ in range(args.steps):
            step(images, labels)

    return args.steps * args.batch_size / timer.measure(run)


# ----------------------------------------------------------------------------- the DALI-fed step


def write_prepared_tree(root: Path, args) -> Path:
    """A prepared tree big enough for one epoch of warm-up + timed steps: a few distinct JPEGs, copied."""
    from alexserve.doctor.checks import write_tiny_prepared_tree

    scale = max(256, args.input_size) if args.device == "cuda" else args.input_size + args.input_size // 7
    needed = args.batch_size * (args.warmup + args.steps + 1)
    train = write_tiny_prepared_tree(root, scale=scale, per_class=8)
    for folder in sorted(train.iterdir()):
        originals = sorted(folder.iterdir())
        for i in range(needed // 2 + 1 - len(originals)):
            (folder / f"copy{i:06d}.JPEG").write_bytes(originals[i % len(originals)].read_bytes())
    return train


def dali_source(args, device: torch.device, train_dir: Path):
    from alexserve.config import DataConfig, JobConfig, TrainConfig
    from alexserve.data.dali_loader import DaliTrainSource
    from alexserve.data.factory import open_prepared_tree, train_plan
    from alexserve.data.prepared_tree import list_prepared_split

    job = JobConfig(
        model=model_config(args).model_copy(update={"num_classes": None}),
        data=DataConfig(source="folder", train_dir=train_dir, loader="dali", num_workers=args.workers),
        train=TrainConfig(batch_size=args.batch_size, seed=0),
    )
    tree = open_prepared_tree(job)
    files = list_prepared_split(tree.train_dir, tree.classes)
    plan = train_plan(job, len(files), tree.stats, 0, 1)
    steps_needed = args.warmup + args.steps
    if plan.steps_per_epoch < steps_needed:
        raise SystemExit(f"{train_dir}: {plan.steps_per_epoch} batches an epoch, the bench needs {steps_needed}")
    source = DaliTrainSource(
        files,
        plan,
        input_size=args.input_size,
        num_threads=args.workers,
        prefetch_batches=2,
        device=device,
        dtype=torch.float32,
    )
    return source


def images_per_second_fed_by(source, step, args, timer: Timer, epoch: int) -> float:
    batches: Iterator = source.batches(epoch)
    for _ in range(args.warmup):
        images, labels = next(batches)
        step(images, labels % NUM_CLASSES)

    def run() -> None:
        for _ in range(args.steps):
            images, labels = next(batches)
            step(images, labels % NUM_CLASSES)

    rate = args.steps * args.batch_size / timer.measure(run)
    batches.close()
    return rate


# ----------------------------------------------------------------------------- the run


def measure(args, device: torch.device) -> dict:
    timer = Timer(device)
    batch = fixed_batch(args, device)
    results: dict = {}
    dali_missing = None
    source, tmp = None, None
    from alexserve.data.dali_loader import DALI_IMPORT_ERROR

    if DALI_IMPORT_ERROR is not None:
        dali_missing = str(DALI_IMPORT_ERROR)
    else:
        if args.data is None:
            tmp = tempfile.TemporaryDirectory(prefix="alexserve-bench-gpu-")
            train_dir = write_prepared_tree(Path(tmp.name), args)
        else:
            train_dir = args.data / "train"
        source = dali_source(args, device, train_dir)
    try:
        for precision in args.precisions:
            grouped = make_step(grouped_model(args, device), device, precision)
            plain = make_step(PlainAlexNet(width=args.width).to(device).train(), device, precision)
            rows = {"grouped": [], "plain": [], "model_only": [], "end_to_end": []}
            for repeat in range(args.repeats):
                rows["grouped"].append(images_per_second_on_fixed_batch(grouped, batch, args, timer))
                rows["plain"].append(images_per_second_on_fixed_batch(plain, batch, args, timer))
                if source is not None:
                    rows["model_only"].append(images_per_second_on_fixed_batch(grouped, batch, args, timer))
                    epoch = len(results) * args.repeats + repeat
                    rows["end_to_end"].append(images_per_second_fed_by(source, grouped, args, timer, epoch))
            figures = {
                "grouped_images_per_second": statistics.median(rows["grouped"]),
                "plain_images_per_second": statistics.median(rows["plain"]),
                "grouped_over_plain": statistics.median(g / p for g, p in zip(rows["grouped"], rows["plain"])),
            }
            if source is not None:
                figures["model_only_images_per_second"] = statistics.median(rows["model_only"])
                figures["end_to_end_images_per_second"] = statistics.median(rows["end_to_end"])
                figures["end_to_end_over_model_only"] = statistics.median(
                    e / m for e, m in zip(rows["end_to_end"], rows["model_only"])
                )
            figures["runs"] = rows
            results[precision] = figures
            del grouped, plain
    finally:
        if source is not None:
            source.close()
        if tmp is not None:
            tmp.cleanup()
    return {"results": results, "dali_missing": dali_missing}


def report(args, device: torch.device, measured: dict) -> None:
    for precision, f in measured["results"].items():
        print(
            f"{precision}: grouped two-tower step {f['grouped_images_per_second']:8.1f} images/s, "
            f"plain AlexNet {f['plain_images_per_second']:8.1f} images/s: grouped / plain "
            f"{f['grouped_over_plain']:.2f}"
        )
        if "end_to_end_over_model_only" in f:
            print(
                f"{precision}: end to end (DALI)        {f['end_to_end_images_per_second']:8.1f} images/s, "
                f"model only    {f['model_only_images_per_second']:8.1f} images/s: end-to-end / model-only "
                f"{f['end_to_end_over_model_only']:.2f}"
            )
    if measured["dali_missing"]:
        print(f"DALI does not import ({measured['dali_missing']}): end to end not measured, model-only figures only")
    if device.type != "cuda":
        print("smoke mode on CPU: these figures keep the code path alive and say nothing about a GPU")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m alexserve.bench.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the smoke mode")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements per pair (median ratio)")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--width", type=float, help="net width (default 1.0 on a GPU, 0.25 on CPU)")
    parser.add_argument("--input-size", type=int, help="crop size (default 224 on a GPU, 64 on CPU)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DALI threads")
    parser.add_argument("--data", type=Path, help="a prepared tree for the end-to-end figure (default: generated)")
    parser.add_argument("--out", type=Path, help="also write the figures and the configuration as JSON here")
    args = parser.parse_args(argv)
    cpu = args.device == "cpu"
    args.width = args.width if args.width is not None else (0.25 if cpu else 1.0)
    args.input_size = args.input_size if args.input_size is not None else (64 if cpu else 224)
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = set(args.precisions) - {"fp32", "bf16"}
    if unknown or not args.precisions:
        parser.error(f"--precisions: {sorted(unknown)} not among fp32, bf16")
    if cpu:
        args.repeats, args.warmup = min(args.repeats, 1), min(args.warmup, 1)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"python -m alexserve.bench.gpu: needs a CUDA GPU, and torch {torch.__version__} sees none "
            f"({'CUDA ' + torch.version.cuda + ' build' if torch.version.cuda else 'a CPU build'}). "
            "`--device cpu --batch-size 8 --steps 2` runs the smoke mode (no GPU figure).",
            file=sys.stderr,
        )
        return NO_CUDA_EXIT
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {os.cpu_count()} cores"
    print(
        f"{name}; torch {torch.__version__}; width {args.width}, input {args.input_size}, batch {args.batch_size}, "
        f"{args.steps} timed steps x {args.repeats} repeats; precisions {', '.join(args.precisions)}",
        flush=True,
    )
    measured = measure(args, device)
    report(args, device, measured)
    if args.out:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        machine = {"device": name, "torch": torch.__version__, "platform": platform.platform()}
        args.out.write_text(json.dumps({**measured, "config": config, "machine": machine}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
