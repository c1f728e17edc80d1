"""The paper's data path on NVIDIA DALI: decode -> subtract mean image -> crop -> flip -> PCA lighting.

All randomness comes from `augment.py` (drawn in Python from (seed, epoch, position))
and enters the pipeline through `external_source`, together with the encoded JPEG
bytes of the files in the planned order. DALI does the heavy part: decoding (`mixed`,
i.e. nvJPEG, when given a CUDA device; libjpeg-turbo on CPU with `device_id=None`),
the mean subtraction, and one fused `crop_mirror_normalize` that crops at the given
offset, reflects when told, adds the lighting offset (as `mean = -offset`, std 1) and
writes float NCHW.

The pipeline runs on DALI's pipelined, asynchronous executor, `prefetch_queue_depth`
(at least 2) batches ahead, and still in the plan's order: its one external source is
a Python callback that DALI calls once per iteration, in iteration order, from the
thread that schedules the runs, and that callback takes the next batch of the plan.
`outputs()` returns the iterations first in, first out, so batch k of the plan is
always output k. The scheduling thread is `prefetch.py`'s loader thread, which sets
the CUDA device first (DALI and torch's copies then target the tower's GPU, not
GPU 0); on a GPU, labels go from pinned host memory with `non_blocking=True` and
images are copied on the loader's current stream, so the host never waits.

On a GPU that current stream is the loader's side stream (`stream_handoff.py`), not the
training's: DALI binds its outputs to it (`outputs(cuda_stream=side)`), the copy into
torch memory and the labels' copy run on it, and the training stream waits for an event
recorded after them. The copy out of DALI's buffer stays: that buffer is DALI's, freed
in the order of the stream it is bound to, and `record_stream` (which would make it safe
to read on another stream) covers only torch's caching allocator; the copy itself now
overlaps the training step instead of queueing in front of it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from alexserve.data.augment import SampleParams, TrainPlan, center_offset, ten_crop_offsets
from alexserve.data.prefetch import PrefetchSlot
from alexserve.data.prepared_tree import LabeledFile
from alexserve.data.source import EvalMode, EvalSource, TrainSource
from alexserve.data.stats import DatasetStats
from alexserve.devices import indexed, use_device_in_this_thread

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
    return indexed(device).index if device.type == "cuda" else None


def _normalized(offset: int, scale: int, size: int) -> float:
    """DALI takes crop positions as fractions of the free range; offset/(scale-size) lands exactly on `offset`."""
    return 0.0 if scale == size else offset / (scale - size)


def _read_bytes(files: list[LabeledFile], indices: Iterable[int]) -> list[np.ndarray]:
    return [np.fromfile(files[i].path, dtype=np.uint8) for i in indices]


def labels_to_device(labels: np.ndarray, device: torch.device) -> torch.Tensor:
    """int64 labels on `device`; to a GPU from pinned memory, without the host waiting for the copy."""
    host = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    if device.type != "cuda":
        return host
    # The caching host allocator keeps the pinned buffer alive until the copy on the stream is done.
    return host.pin_memory().to(device, non_blocking=True)


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
        # On the stream the outputs were made ready on (see InOrderPipeline), the loader's side stream on a GPU:
        # no host sync, and nothing queued on the training stream.
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
        return out.to(dtype)
    # np.array copies out of DALI's buffer, which a later iteration reuses.
    return torch.from_numpy(np.array(dense)).to(device=device, dtype=dtype)


#: The least executor depth: one batch being prepared while the previous one is handed over.
MIN_QUEUE_DEPTH = 2


def _pipeline_kwargs(
    batch_size: int, num_threads: int, device: torch.device, seed: int, queue_depth: int = MIN_QUEUE_DEPTH
) -> dict:
    return dict(
        batch_size=batch_size,
        num_threads=max(1, num_threads),
        device_id=_device_id(device),
        exec_async=True,
        exec_pipelined=True,
        # `outputs(cuda_stream)` needs the dynamic executor; stable since DALI 1.44 (its release notes), the floor.
        exec_dynamic=True,
        prefetch_queue_depth=max(MIN_QUEUE_DEPTH, queue_depth),
        seed=seed,  # nothing random runs inside the graph; fixed anyway
    )


class InOrderPipeline:
    """One DALI pipeline fed from a Python iterator, batches out in the order they went in.

    `make_pipeline(source)` builds the graph around `fn.external_source(source=source, batch=True, ...)`.
    DALI calls `source()` once per iteration, in order, on the thread that calls `schedule_run`; it takes
    the next `(meta, arrays)` of the current pass, queues `meta` (the labels) and hands `arrays` to DALI.
    The pipelined executor keeps `prefetch_queue_depth` iterations in flight; `outputs()` returns them
    first in, first out, so output k always pairs with the k-th `meta`.

    A pass that ends (StopIteration from the iterator, then from `outputs()`) resets the pipeline for
    the next. A pass abandoned midway (a break, a crash, a resume at another step) leaves iterations
    in flight that belong to it; the pipeline is then dropped and rebuilt on the next pass, so they
    never surface in the next one.
    """

    def __init__(self, make_pipeline: Callable[[Callable[[], tuple]], object], device: torch.device):
        self._make, self._device = make_pipeline, device
        self._pipe = None
        self._inputs: Iterator[tuple[np.ndarray, tuple]] = iter(())
        self._metas: deque[np.ndarray] = deque()

    def _source(self) -> tuple:
        meta, arrays = next(self._inputs)  # StopIteration ends DALI's epoch
        self._metas.append(meta)
        return arrays

    def passes(self, inputs: Iterable[tuple[np.ndarray, tuple]]) -> Iterator[tuple[object, np.ndarray]]:
        """Yields (DALI output, meta) for every item of `inputs`, in order. Runs in the loader thread."""
        use_device_in_this_thread(self._device)
        if self._pipe is None:
            self._pipe = self._make(self._source)
            self._pipe.build()
        pipe, finished = self._pipe, False
        self._inputs, self._metas = iter(inputs), deque()
        # The loader thread's current stream: the side stream, as this runs under the handoff's stream context.
        stream = torch.cuda.current_stream(self._device) if self._device.type == "cuda" else None
        try:
            pipe.schedule_run()  # the first call fills the executor's queue, prefetch_queue_depth deep
            while True:
                try:
                    (output,) = pipe.outputs(stream)
                except StopIteration:
                    finished = True
                    return
                yield output, self._metas.popleft()
                pipe.schedule_run()  # one more in flight (nothing when the iterator is spent)
        finally:
            if finished:
                pipe.reset()
            else:
                self._pipe = None

    def close(self) -> None:
        self._pipe = None


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
        self._prefetch = PrefetchSlot(prefetch_batches, device)
        gpu = device.type == "cuda"
        kwargs = _pipeline_kwargs(plan.batch_size, num_threads, device, plan.seed, prefetch_batches)

        def make_pipeline(source):
            @pipeline_def(**kwargs)
            def train_pipeline():
                jpegs, pos_x, pos_y, mirror, neg_lighting = fn.external_source(
                    source=source,
                    num_outputs=5,
                    batch=True,
                    dtype=[types.UINT8, types.FLOAT, types.FLOAT, types.INT32, types.FLOAT],
                    ndim=[1, 0, 0, 0, 1],
                )
                centred = _decoded_minus_mean(jpegs, plan.stats.mean_image, gpu)
                return _crop(centred, input_size, pos_x, pos_y, mirror, neg_lighting)

            return train_pipeline()

        self._pipeline = InOrderPipeline(make_pipeline, device)

    @property
    def wait_seconds_total(self) -> float:
        return self._prefetch.wait_seconds_total

    def _inputs(self, p: SampleParams) -> tuple[np.ndarray, tuple]:
        """(labels, the pipeline's five inputs) of one step; called by DALI in the loader thread."""
        s, n = self._scale, self._size
        labels = np.array([self._files[i].label for i in p.file_indices], dtype=np.int64)
        arrays = (
            _read_bytes(self._files, p.file_indices),
            [np.float32(_normalized(int(x), s, n)) for x in p.crop_x],
            [np.float32(_normalized(int(y), s, n)) for y in p.crop_y],
            [np.int32(f) for f in p.flip],
            [(-o).astype(np.float32) for o in p.lighting],
        )
        return labels, arrays

    def _produce(self, steps: list[SampleParams]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self._pipeline.passes(self._inputs(p) for p in steps):
            yield _to_torch(images, self._device, self._dtype), labels_to_device(labels, self._device)

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # One pipeline, one epoch at a time: starting an epoch ends the previous iteration's thread.
        steps = self._plan.step_params(epoch, start_step)
        return self._prefetch.start(self._produce(steps))

    def close(self) -> None:
        self._prefetch.stop()
        self._pipeline.close()


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
        self._pipes: dict[str, InOrderPipeline] = {}
        self._prefetch = PrefetchSlot(prefetch_batches, device)
        self._queue_depth = prefetch_batches

    @property
    def wait_seconds_total(self) -> float:
        return self._prefetch.wait_seconds_total

    def _pipeline(self, mode: EvalMode) -> InOrderPipeline:
        if mode not in ("center", "ten_crop"):
            raise ValueError(f"eval mode must be 'center' or 'ten_crop', got {mode!r}")
        if mode not in self._pipes:
            s, n, gpu = self._stats.scale_size, self._size, self._device.type == "cuda"
            mean_image = self._stats.mean_image
            kwargs = _pipeline_kwargs(self._batch, self._threads, self._device, 0, self._queue_depth)

            def make_pipeline(source):
                @pipeline_def(**kwargs)
                def eval_pipeline():
                    (jpegs,) = fn.external_source(source=source, num_outputs=1, batch=True, dtype=[types.UINT8])
                    centred = _decoded_minus_mean(jpegs, mean_image, gpu)
                    if mode == "center":
                        c = _normalized(center_offset(s, n), s, n)
                        return _crop(centred, n, c, c, 0)
                    crops = [
                        _crop(centred, n, _normalized(x, s, n), _normalized(y, s, n), int(f))
                        for x, y, f in ten_crop_offsets(s, n)
                    ]
                    return fn.stack(*crops, axis=0)

                return eval_pipeline()

            self._pipes[mode] = InOrderPipeline(make_pipeline, self._device)
        return self._pipes[mode]

    def _inputs(self, start: int) -> tuple[np.ndarray, tuple]:
        chunk = self._files[start : start + self._batch]
        labels = np.array([f.label for f in chunk], dtype=np.int64)
        return labels, ([np.fromfile(f.path, dtype=np.uint8) for f in chunk],)

    def _produce(self, pipeline: InOrderPipeline) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        starts = range(0, self.num_images, self._batch)
        for images, labels in pipeline.passes(self._inputs(i) for i in starts):
            yield _to_torch(images, self._device, self._dtype), labels_to_device(labels, self._device)

    def batches(self, mode: EvalMode) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._prefetch.stop()
        return self._prefetch.start(self._produce(self._pipeline(mode)))

    def close(self) -> None:
        self._prefetch.stop()
        for pipeline in self._pipes.values():
            pipeline.close()
        self._pipes.clear()
