"""A learnable dataset generated in memory: the demo's and the fast tests' data.

Each class is a smooth random colour pattern (a few blobs of colour upsampled
from a 4x4 grid); an image is its class pattern at a random brightness plus
pixel noise. Images are stored at `data.scale_size` like a prepared tree's,
so training takes random crops and flips and evaluation takes the centre or
ten crops, exactly like the folder loaders. Everything is a function
of the seed, so both towers of a pair hold identical data without talking.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from alexserve.config import JobConfig, paper_scale_size
from alexserve.data.source import EvalMode, EvalSource, TrainSource, eval_shard_indices

# Prepared images are centred raw RGB in 0..255 units (the paper trains on those); the
# paper's N(0, 0.01) init relies on that scale, so generated images use it too.
PIXEL_SCALE = 50.0


GENERATED_NUM_CLASSES = 10  # when model.num_classes is left unset


def stored_size(job: JobConfig) -> int:
    """Side of a stored image: data.scale_size like a prepared tree's, or the paper's 256:224 of the input size."""
    size = job.data.scale_size or paper_scale_size(job.model.input_size)
    if size < job.model.input_size:
        raise ValueError(f"data.scale_size {size} is smaller than model.input_size {job.model.input_size}")
    return size


def generate_images(job: JobConfig, count: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    size = stored_size(job)
    classes = job.model.num_classes or GENERATED_NUM_CLASSES
    patterns_rng = torch.Generator().manual_seed(job.train.seed * 7919 + 17)  # shared by train and val
    patterns = F.interpolate(
        torch.randn(classes, 3, 4, 4, generator=patterns_rng), size=(size, size), mode="bicubic", align_corners=False
    )
    rng = torch.Generator().manual_seed(job.train.seed * 7919 + split_seed)
    labels = torch.randint(0, classes, (count,), generator=rng)
    brightness = 0.6 + 0.8 * torch.rand(count, 1, 1, 1, generator=rng)
    noise = 1.0 * torch.randn(count, 3, size, size, generator=rng)
    images = patterns[labels] * brightness + noise
    return (PIXEL_SCALE * images).float(), labels


def to_device(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """To a GPU through pinned memory without the host waiting for the copy; elsewhere a plain `.to`."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, dtype, non_blocking=True)
    return tensor.to(device, dtype)


def crop(images: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    return images[..., top : top + size, left : left + size]


def ten_crops(images: torch.Tensor, size: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 10, 3, size, size]: corners and centre, then the same five reflected."""
    h, w = images.shape[-2:]
    origins = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), ((h - size) // 2, (w - size) // 2)]
    five = [crop(images, top, left, size) for top, left in origins]
    return torch.stack(five + [c.flip(-1) for c in five], dim=1)


class GeneratedTrainSource(TrainSource):
    def __init__(self, job: JobConfig, dp_rank: int, dp_size: int, device: torch.device):
        self.images, self.labels = generate_images(job, job.data.generated_train_images, split_seed=1)
        self.seed, self.dp_rank, self.dp_size = job.train.seed, dp_rank, dp_size
        self.batch_size, self.crop_size = job.train.batch_size, job.model.input_size
        self.flip_probability = job.data.flip_probability_used
        self.device, self.dtype = device, getattr(torch, job.train.dtype)
        shard = len(self.labels) // dp_size
        self.steps_per_epoch = shard // self.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"data.generated_train_images={len(self.labels)} over {dp_size} pair(s) is less than one batch of "
                f"train.batch_size={self.batch_size}"
            )

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        order = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        shard = len(order) // self.dp_size
        return order[self.dp_rank * shard : (self.dp_rank + 1) * shard]

    def _augment(self, epoch: int, step: int, images: torch.Tensor) -> torch.Tensor:
        rng = torch.Generator().manual_seed(((self.seed * 1_000_003 + epoch) * 65_537 + step) * 64 + self.dp_rank)
        room = images.shape[-1] - self.crop_size
        tops = torch.randint(0, room + 1, (len(images),), generator=rng)
        lefts = torch.randint(0, room + 1, (len(images),), generator=rng)
        flips = torch.rand(len(images), generator=rng) < self.flip_probability
        out = torch.stack(
            [crop(img, int(top), int(left), self.crop_size) for img, top, left in zip(images, tops, lefts)]
        )
        out[flips] = out[flips].flip(-1)
        return out

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._epoch_order(epoch)
        for step in range(start_step, self.steps_per_epoch):
            began = time.perf_counter()
            index = order[step * self.batch_size : (step + 1) * self.batch_size]
            images = self._augment(epoch, step, self.images[index])
            batch = to_device(images, self.device, self.dtype), to_device(self.labels[index], self.device)
            self.wait_seconds_total += time.perf_counter() - began
            yield batch


class GeneratedEvalSource(EvalSource):
    def __init__(self, job: JobConfig, device: torch.device, shard: int = 0, num_shards: int = 1):
        self.images, self.labels = generate_images(job, job.data.generated_val_images, split_seed=2)
        if num_shards > 1:
            keep = torch.tensor(eval_shard_indices(len(self.labels), job.train.batch_size, shard, num_shards))
            self.images, self.labels = self.images[keep], self.labels[keep]
        self.num_images = len(self.labels)
        self.batch_size, self.crop_size = job.train.batch_size, job.model.input_size
        self.device, self.dtype = device, getattr(torch, job.train.dtype)

    def batches(self, mode: EvalMode) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.num_images, self.batch_size):
            images = self.images[start : start + self.batch_size]
            if mode == "center":
                room = images.shape[-1] - self.crop_size
                images = crop(images, room // 2, room // 2, self.crop_size)
            else:
                images = ten_crops(images, self.crop_size)
            labels = self.labels[start : start + self.batch_size]
            yield to_device(images.contiguous(), self.device, self.dtype), to_device(labels, self.device)


def build_generated_train_source(
    job: JobConfig, *, dp_rank: int = 0, dp_size: int = 1, device: torch.device
) -> TrainSource:
    return GeneratedTrainSource(job, dp_rank, dp_size, device)


def build_generated_eval_source(
    job: JobConfig, *, device: torch.device, shard: int = 0, num_shards: int = 1
) -> EvalSource:
    return GeneratedEvalSource(job, device, shard, num_shards)
