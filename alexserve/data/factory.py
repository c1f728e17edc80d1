"""Build the configured data source for one tower.

    source = build_train_source(job, dp_rank=rank // 2, dp_size=world // 2, device=device)
    for images, labels in source.batches(epoch, start_step): ...

Both towers of a pair call this with the same job and dp_rank and get identical
batches (see `augment.py`). `data.source: generated` delegates to
`alexserve.data.generated`; `folder` reads a tree made by `alexserve prepare`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from alexserve.config import JobConfig
from alexserve.data.augment import TrainPlan
from alexserve.data.mirror_check import MIRROR_CHECK_FILE, MirrorCheck
from alexserve.data.prepared_tree import (
    CLASSES_FILE,
    STATS_FILE,
    ClassInfo,
    DatasetError,
    LabeledFile,
    list_prepared_split,
    read_class_index,
)
from alexserve.data.source import EmptyEvalSource, EvalSource, TrainSource, eval_shard_indices
from alexserve.data.stats import DatasetStats

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class PreparedTree:
    """A prepared tree's files, classes and statistics, checked against the job."""

    stats: DatasetStats
    classes: list[ClassInfo]
    train_dir: Path
    val_dir: Path
    mirror_check: MirrorCheck | None = None  # None: prepared before `prepare` checked mirroring


def open_prepared_tree(job: JobConfig) -> PreparedTree:
    data = job.data
    if data.train_dir is None:
        raise DatasetError("data.train_dir is not set; data.source 'folder' needs a tree made by `alexserve prepare`")
    train_dir = Path(data.train_dir)
    root = train_dir.parent
    stats_path = Path(data.stats_path) if data.stats_path is not None else root / STATS_FILE
    stats = DatasetStats.load(stats_path)
    classes = read_class_index(root / CLASSES_FILE)
    if data.scale_size is not None and stats.scale_size != data.scale_size:
        raise DatasetError(
            f"{stats_path}: prepared at scale_size {stats.scale_size} but data.scale_size is {data.scale_size}; "
            "re-run `alexserve prepare` with this scale, or leave data.scale_size unset to take the tree's"
        )
    if job.model.input_size > stats.scale_size:
        raise DatasetError(
            f"model.input_size {job.model.input_size} is larger than the prepared images ({stats.scale_size})"
        )
    if job.model.num_classes is not None and len(classes) != job.model.num_classes:
        raise DatasetError(
            f"{root / CLASSES_FILE} lists {len(classes)} classes but model.num_classes is {job.model.num_classes}; "
            "leave model.num_classes unset to take the tree's"
        )
    val_dir = Path(data.val_dir) if data.val_dir is not None else root / "val"
    return PreparedTree(stats, classes, train_dir, val_dir, MirrorCheck.load(root / MIRROR_CHECK_FILE))


class LoaderUnavailableError(DatasetError):
    """The configured loader cannot feed this device (DALI missing on a GPU host)."""


def dali_import_error() -> ImportError | None:
    """Why DALI does not import here, or None (a function, so tests can pretend DALI is missing)."""
    from alexserve.data.dali_loader import DALI_IMPORT_ERROR

    return DALI_IMPORT_ERROR


def _use_dali(job: JobConfig, device: torch.device) -> bool:
    """DALI unless `data.loader: pil`. Without DALI: the PIL peer on CPU (a warning), an error on a GPU.

    On a GPU the PIL loader (a few decode processes, no GPU decode) would leave the GPU waiting for
    data most of the time, so it runs there only when asked for by name.
    """
    if job.data.loader != "dali":
        return False
    err = dali_import_error()
    if err is None:
        return True
    if device.type == "cuda":
        raise LoaderUnavailableError(
            f"data.loader is 'dali' and the device is {device}, but NVIDIA DALI does not import ({err}). "
            "Install it (pip install nvidia-dali-cuda120, or alexserve[dali]; the Docker image has it), "
            "or set data.loader: pil to train on the slower PIL loader on purpose."
        )
    warnings.warn(f"data.loader is 'dali' but DALI does not import ({err}); using the PIL loader", stacklevel=3)
    return False


def train_plan(job: JobConfig, num_images: int, stats: DatasetStats, dp_rank: int, dp_size: int) -> TrainPlan:
    return TrainPlan(
        num_images=num_images,
        batch_size=job.train.batch_size,
        seed=job.train.seed,
        dp_rank=dp_rank,
        dp_size=dp_size,
        max_offset=stats.scale_size - job.model.input_size,
        flip_probability=job.data.flip_probability_used,
        pca_lighting_std=job.data.pca_lighting_std,
        stats=stats,
    )


def build_train_source(job: JobConfig, *, dp_rank: int = 0, dp_size: int = 1, device: torch.device) -> TrainSource:
    if job.data.source == "generated":
        from alexserve.data.generated import build_generated_train_source

        return build_generated_train_source(job, dp_rank=dp_rank, dp_size=dp_size, device=device)
    tree = open_prepared_tree(job)
    files: list[LabeledFile] = list_prepared_split(tree.train_dir, tree.classes)
    plan = train_plan(job, len(files), tree.stats, dp_rank, dp_size)
    common = dict(
        input_size=job.model.input_size,
        prefetch_batches=job.data.prefetch_batches,
        device=device,
        dtype=_DTYPES[job.train.dtype],
    )
    if _use_dali(job, device):
        from alexserve.data.dali_loader import DaliTrainSource

        return DaliTrainSource(files, plan, num_threads=job.data.num_workers, **common)
    from alexserve.data.pil_loader import PilTrainSource

    return PilTrainSource(files, plan, num_workers=job.data.num_workers, **common)


def build_eval_source(
    job: JobConfig, *, device: torch.device, split: str = "val", shard: int = 0, num_shards: int = 1
) -> EvalSource:
    """The evaluation images of data-parallel pair `shard` of `num_shards` (`eval_shard_indices`); all with one."""
    if job.data.source == "generated":
        from alexserve.data.generated import build_generated_eval_source

        return build_generated_eval_source(job, device=device, shard=shard, num_shards=num_shards)
    tree = open_prepared_tree(job)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    files = list_prepared_split(tree.val_dir if split == "val" else tree.train_dir, tree.classes)
    if num_shards > 1:
        files = [files[i] for i in eval_shard_indices(len(files), job.train.batch_size, shard, num_shards)]
        if not files:
            return EmptyEvalSource()
    common = dict(
        batch_size=job.train.batch_size,
        input_size=job.model.input_size,
        prefetch_batches=job.data.prefetch_batches,
        device=device,
        dtype=_DTYPES[job.train.dtype],
    )
    if _use_dali(job, device):
        from alexserve.data.dali_loader import DaliEvalSource

        return DaliEvalSource(files, tree.stats, num_threads=job.data.num_workers, **common)
    from alexserve.data.pil_loader import PilEvalSource

    return PilEvalSource(files, tree.stats, num_workers=job.data.num_workers, **common)
