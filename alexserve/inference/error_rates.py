"""Top-1/top-5 error of a saved model on a prepared tree, centre crop and ten crops (`alexserve eval`).

Runs the grouped model in one process, on the GPU if there is one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from alexserve.config import DataConfig, JobConfig, TrainConfig
from alexserve.data.factory import build_eval_source
from alexserve.data.source import EvalMode
from alexserve.devices import default_device
from alexserve.inference.saved_model import load_model
from alexserve.train.evaluation import EvalResult, evaluate

EVAL_MODES: tuple[EvalMode, ...] = ("center", "ten_crop")


def measure_error_rates(
    model_path: Path,
    data: Path,
    *,
    split: str = "val",
    batch_size: int = 128,
    loader: str = "dali",
    num_workers: int = 2,
) -> Iterator[EvalResult]:
    """One `EvalResult` per mode of `EVAL_MODES`, each computed as the iterator reaches it.

    `data` is a prepared tree (`alexserve prepare`). The model and the data are opened before the
    first result, so a bad path raises `ExportError`, `CheckpointError` or `DatasetError` at once;
    iterate to the end, which closes the loader.
    """
    data = Path(data)
    device = default_device()  # cuda:N with its index: the loader threads set it as their device
    model, mirrors = load_model(model_path, device)
    job = JobConfig(
        model=model.cfg,
        data=DataConfig(
            source="folder", train_dir=data / "train", val_dir=data / "val", loader=loader, num_workers=num_workers
        ),
        train=TrainConfig(batch_size=batch_size),
    )
    source = build_eval_source(job, device=device, split=split)
    return _results(model, source, mirrors)


def _results(model, source, mirrors: bool) -> Iterator[EvalResult]:
    try:
        with torch.no_grad():
            for mode in EVAL_MODES:
                yield evaluate(model, source, mode, mirrors=mirrors)
    finally:
        source.close()
