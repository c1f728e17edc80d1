"""The PIL + torch DataLoader peer of the DALI loader: the same plan, the same arithmetic.

Used on CPU where DALI is not installed, on a GPU only when `data.loader: pil` asks
for it (then batches come from pinned memory, copied with `non_blocking=True`), and
as the benchmark's baseline. Each sample is
(decode -> crop -> subtract the same crop of the mean image -> reflect -> add the
lighting offset), in float32 like DALI; cropping before subtracting only skips the
pixels that are thrown away (the difference is elementwise, so the values are the same).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from alexserve.data.augment import TrainPlan, center_offset, ten_crop_offsets
from alexserve.data.prefetch import PrefetchSlot
from alexserve.data.prepared_tree import LabeledFile
from alexserve.data.source import EvalMode, EvalSource, TrainSource
from alexserve.data.stats import DatasetStats
from alexserve.devices import use_device_in_this_thread


def decode_rgb(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def crop_centred(image: np.ndarray, mean_image: np.ndarray, x: int, y: int, size: int, flip: bool) -> np.ndarray:
    """HWC uint8 image -> CHW float32 crop of (image - mean), reflected when `flip`."""
    patch = image[y : y + size, x : x + size].astype(np.float32) - mean_image[y : y + size, x : x + size]
    if flip:
        patch = patch[:, ::-1]
    return patch.transpose(2, 0, 1)


class _TrainSamples(Dataset):
    """Indexed by a sample spec (path, label, x, y, flip, lighting), not by an integer: the plan decides everything."""

    def __init__(self, mean_image: np.ndarray, size: int):
        self.mean_image, self.size = mean_image, size

    def __len__(self) -> int:  # only the batch sampler indexes this dataset
        return 0

    def __getitem__(self, spec):
        path, label, x, y, flip, lighting = spec
        patch = crop_centred(decode_rgb(path), self.mean_image, x, y, self.size, flip)
        patch = patch + np.asarray(lighting, np.float32)[:, None, None]
        return torch.from_numpy(np.ascontiguousarray(patch)), label


class _EvalSamples(Dataset):
    def __init__(self, files: list[LabeledFile], mean_image: np.ndarray, size: int, mode: EvalMode):
        self.files, self.mean_image, self.size, self.mode = files, mean_image, size, mode
        scale = mean_image.shape[0]
        c = center_offset(scale, size)
        self.offsets = [(c, c, False)] if mode == "center" else ten_crop_offsets(scale, size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        image = decode_rgb(self.files[i].path)
        crops = np.stack([crop_centred(image, self.mean_image, x, y, self.size, f) for x, y, f in self.offsets])
        out = torch.from_numpy(crops[0] if self.mode == "center" else crops)
        return out, self.files[i].label


def _loader(dataset, batch_sampler, num_workers: int, device: torch.device) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        prefetch_factor=2 if num_workers else None,
        pin_memory=device.type == "cuda",  # page-locked batches: the copy below does not block the host
    )


def to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device, dtype: torch.dtype):
    """A batch on the tower's device; from pinned memory to a GPU without the host waiting."""
    non_blocking = device.type == "cuda"
    return images.to(device, dtype, non_blocking=non_blocking), labels.to(device, non_blocking=non_blocking)


class PilTrainSource(TrainSource):
    def __init__(
        self,
        files: list[LabeledFile],
        plan: TrainPlan,
        *,
        input_size: int,
        num_workers: int,
        prefetch_batches: int,
        device,
        dtype,
    ):
        self._files, self._plan, self._size = files, plan, input_size
        self._workers, self._device, self._dtype = num_workers, device, dtype
        self._dataset = _TrainSamples(plan.stats.mean_image, input_size)
        self.steps_per_epoch = plan.steps_per_epoch
        self._prefetch = PrefetchSlot(prefetch_batches, device)

    @property
    def wait_seconds_total(self) -> float:
        return self._prefetch.wait_seconds_total

    def _specs(self, epoch: int, start_step: int) -> list[list[tuple]]:
        batches = []
        for p in self._plan.step_params(epoch, start_step):
            batches.append(
                [
                    (str(self._files[i].path), self._files[i].label, int(x), int(y), bool(f), tuple(map(float, o)))
                    for i, x, y, f, o in zip(p.file_indices, p.crop_x, p.crop_y, p.flip, p.lighting)
                ]
            )
        return batches

    def _produce(self, specs):
        use_device_in_this_thread(self._device)  # runs on the loader thread (prefetch.py)
        for images, labels in _loader(self._dataset, specs, self._workers, self._device):
            yield to_device(images, labels, self._device, self._dtype)

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._prefetch.start(self._produce(self._specs(epoch, start_step)))

    def close(self) -> None:
        self._prefetch.stop()


class PilEvalSource(EvalSource):
    def __init__(
        self,
        files: list[LabeledFile],
        stats: DatasetStats,
        *,
        batch_size: int,
        input_size: int,
        num_workers: int,
        prefetch_batches: int,
        device,
        dtype,
    ):
        self._files, self._stats, self._size, self._batch = files, stats, input_size, batch_size
        self._workers, self._device, self._dtype = num_workers, device, dtype
        self.num_images = len(files)
        self._prefetch = PrefetchSlot(prefetch_batches, device)

    @property
    def wait_seconds_total(self) -> float:
        return self._prefetch.wait_seconds_total

    def _produce(self, mode: EvalMode):
        dataset = _EvalSamples(self._files, self._stats.mean_image, self._size, mode)
        sampler = [
            list(range(i, min(i + self._batch, self.num_images))) for i in range(0, self.num_images, self._batch)
        ]
        use_device_in_this_thread(self._device)
        for images, labels in _loader(dataset, sampler, self._workers, self._device):
            yield to_device(images, labels, self._device, self._dtype)

    def batches(self, mode: EvalMode) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if mode not in ("center", "ten_crop"):
            raise ValueError(f"eval mode must be 'center' or 'ten_crop', got {mode!r}")
        return self._prefetch.start(self._produce(mode))

    def close(self) -> None:
        self._prefetch.stop()
