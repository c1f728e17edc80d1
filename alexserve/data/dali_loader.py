"""The paper's data path on NVIDIA DALI: decode -> subtract mean image -> crop -> flip -> PCA lighting.

All randomness comes from `augment.py` (drawn in Python from (seed, epoch, position))
and enters the pipeline through `external_source`, together with the encoded JPEG
bytes of the files in the planned order. DALI does the heavy part: decoding (`mixed`,
i.e. nvJPEG, when given a CUDA device; libjpeg-turbo on CPU with `device_id=None`),
the mean subtraction, and one fused `crop_mirror_normalize` that crops at the given
offset, reflects when told, adds the lighting offset (as `mean = -offset`, std 1) and
writes float NCHW. We run the pipeline synchronously and overlap it with training
through `prefetch.py`, which keeps the plan, not DALI's own queue, in charge of order.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from alexserve.data.augment import SampleParams, TrainPlan, center_offset, ten_crop_offsets
from alexserve.data.prefetch import PrefetchSlot
from alexserve.data.prepared_tree import LabeledFile
from alexserve.data.source import EvalMode, EvalSource, TrainSource
from alexserve.data.stats import DatasetStats

try:  # DALI is an optional dependency (extra 'dali'); the factory falls back to the PIL peer without it.
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def
    from nvidia.dali.backend import TensorListGPU
    from nvidia.dali.plugin.pytorch import feed_ndarray

    DALI_IMPORT_ERROR: ImportError | None = None
except ImportError as err:  # pragma: no cover - exercised only where DALI is absent
    DALI_IMPORT_ERROR = err


def dali_available() -> bool:
    return DALI_IMPORT_ERROR is None


def _require_dali() -> None:
    if DALI_IMPORT_ERROR is not None:
        raise ImportError(
            "data.loader 'dali' needs NVIDIA DALI (pip install nvidia-dali-cuda120, or alexserve[dali]): "
            f"{DALI_IMPORT_ERROR}"
        )


def _device_id(device: torch.device) -> int | None:
    """DALI's device_id: the CUDA index, or None for a CPU-only pipeline."""
    if device.type == "cuda":
        return device.index if device.index is not None else torch.cuda.current_device()
    return None


def _normalized(offset: int, scale: int, size: int) -> float:
    """DALI takes crop positions as fractions of the free range; offset/(scale-size) lands exactly on `offset`."""
    return 0.0 if scale == size else offset / (scale - size)


def _read_bytes(files: list[LabeledFile], indices: np.ndarray) -> list[np.ndarray]:
    return [np.fromfile(files[i].path, dtype=np.uint8) for i in indices]


def _decoded_minus_mean(jpegs, mean_image: np.ndarray, gpu: bool):
    images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
    mean = types.Constant(mean_image.astype(np.float32), device="gpu" if gpu else "cpu")
    return fn.cast(images, dtype=types.FLOAT) - mean


def _crop(images, size: int, pos_x, pos_y, mirror, neg_lighting=None):
    kwargs = {} if neg_lighting is None else {"mean": neg_lighting, "std": 1.0}
    return fn.crop_mirror_normalize(
        images,
        crop=(size, size),
        crop_pos_x=pos_x,
        crop_pos_y=pos_y,
        mirror=mirror,
        dtype=types.FLOAT,
        output_layout="CHW",
        **kwargs,
    )


def _to_torch(tensor_list, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    dense = tensor_list.as_tensor()
    if isinstance(tensor_list, TensorListGPU):
        out = torch.empty(dense.shape(), dtype=torch.float32, device=device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
        return out.to(dtype)
    # np.array copies out of DALI's buffer, which the next run() reuses.
    return torch.from_numpy(np.array(dense)).to(device=device, dtype=dtype)


def _pipeline_kwargs(batch_size: int, num_threads: int, device: torch.device, seed: int) -> dict:
    # Synchronous execution: every run() consumes exactly the inputs just fed, so order is the plan's.
    return dict(
        batch_size=batch_size,
        num_threads=max(1, num_threads),
        device_id=_device_id(device),
        exec_async=False,
        exec_pipelined=False,
        prefetch_queue_depth=1,
        seed=seed,  # nothing random runs inside the graph; fixed anyway
    )


class DaliTrainSource(TrainSource):
    def __init__(
        self,
        files: list[LabeledFile],
        plan: TrainPlan,
        *,
        input_size: int,
        num_threads: int,
        prefetch_batches: int,
        device: torch.device,
        dtype: torch.dtype,
    ):
        _require_dali()
        self._files, self._plan, self._size = files, plan, input_size
        self._scale = plan.stats.scale_size
        self._device, self._dtype = device, dtype
        self.steps_per_epoch = plan.steps_per_epoch
        self._prefetch = PrefetchSlot(prefetch_batches)
        gpu = device.type == "cuda"

        @pipeline_def(**_pipeline_kwargs(plan.batch_size, num_threads, device, plan.seed))
        def train_pipeline():
            jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1)
            pos_x = fn.external_source(name="pos_x", dtype=types.FLOAT, ndim=0)
            pos_y = fn.external_source(name="pos_y", dtype=types.FLOAT, ndim=0)
            mirror = fn.external_source(name="mirror", dtype=types.INT32, ndim=0)
            neg_lighting = fn.external_source(name="neg_lighting", dtype=types.FLOAT, ndim=1)
            centred = _decoded_minus_mean(jpegs, plan.stats.mean_image, gpu)
            return _crop(centred, input_size, pos_x, pos_y, mirror, neg_lighting)

        self._pipe = train_pipeline()
        self._pipe.build()

    @property
    def wait_seconds_total(self) -> float:
        return self._prefetch.wait_seconds_total

    def _run(self, p: SampleParams) -> tuple[torch.Tensor, torch.Tensor]:
        pipe, s, n = self._pipe, self._scale, self._size
        pipe.feed_input("jpegs", _read_bytes(self._files, p.file_indices))
        pipe.feed_input("pos_x", [np.float32(_normalized(int(x), s, n)) for x in p.crop_x])
        pipe.feed_input("pos_y", [np.float32(_normalized(int(y), s, n)) for y in p.crop_y])
        pipe.feed_input("mirror", [np.int32(f) for f in p.flip])
        pipe.feed_input("neg_lighting", [(-o).astype(np.float32) for o in p.lighting])
        (images,) = pipe.run()
        labels = torch.tensor([self._files[i].label for i in p.file_indices], dtype=torch.int64, device=self._device)
        return _to_torch(images, self._device, self._dtype), labels

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # One pipeline, one epoch at a time: starting an epoch ends the previous iteration's thread.
        steps = self._plan.step_params(epoch, start_step)
        return self._prefetch.start(self._run(p) for p in steps)

    def close(self) -> None:
        self._prefetch.stop()
        self._pipe = None


class DaliEvalSource(EvalSource):
    def __init__(
        self,
        files: list[LabeledFile],
        stats: DatasetStats,
        *,
        batch_size: int,
        input_size: int,
        num_threads: int,
        prefetch_batches: int,
        device: torch.device,
        dtype: torch.dtype,
    ):
        _require_dali()
        self._files, self._stats, self._size, self._batch = files, stats, input_size, batch_size
        self._threads, self._device, self._dtype = num_threads, device, dtype
        self.num_images = len(files)
        self._pipes: dict[str, object] = {}
        self._prefetch = PrefetchSlot(prefetch_batches)

    @property
    def wait_seconds_total(self) -> float:
        return self._prefetch.wait_seconds_total

    def _pipeline(self, mode: EvalMode):
        if mode not in ("center", "ten_crop"):
            raise ValueError(f"eval mode must be 'center' or 'ten_crop', got {mode!r}")
        if mode not in self._pipes:
            s, n, gpu = self._stats.scale_size, self._size, self._device.type == "cuda"
            mean_image = self._stats.mean_image

            @pipeline_def(**_pipeline_kwargs(self._batch, self._threads, self._device, 0))
            def eval_pipeline():
                jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1)
                centred = _decoded_minus_mean(jpegs, mean_image, gpu)
                if mode == "center":
                    c = _normalized(center_offset(s, n), s, n)
                    return _crop(centred, n, c, c, 0)
                crops = [
                    _crop(centred, n, _normalized(x, s, n), _normalized(y, s, n), int(f))
                    for x, y, f in ten_crop_offsets(s, n)
                ]
                return fn.stack(*crops, axis=0)

            pipe = eval_pipeline()
            pipe.build()
            self._pipes[mode] = pipe
        return self._pipes[mode]

    def _run(self, pipe, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self._files[start : start + self._batch]
        pipe.feed_input("jpegs", [np.fromfile(f.path, dtype=np.uint8) for f in chunk])
        (images,) = pipe.run()
        labels = torch.tensor([f.label for f in chunk], dtype=torch.int64, device=self._device)
        return _to_torch(images, self._device, self._dtype), labels

    def batches(self, mode: EvalMode) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._prefetch.stop()
        pipe = self._pipeline(mode)
        starts = range(0, self.num_images, self._batch)
        return self._prefetch.start(self._run(pipe, i) for i in starts)

    def close(self) -> None:
        self._prefetch.stop()
        self._pipes.clear()
