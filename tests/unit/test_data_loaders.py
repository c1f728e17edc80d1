"""DALI and PIL loaders against pixels cut by hand from the same plan.

Towers in separate processes are in tests/integration/test_data_loaders_across_processes.py. The GPU-only parts
(DALI's `mixed` decode, pinned-memory copies) run here only where CUDA is available; what decides the loader on a
GPU host (DALI missing: an error unless PIL is asked for) is tested on CPU by pretending.
"""

import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexserve.data import factory
from alexserve.data.factory import (
    LoaderUnavailableError,
    build_eval_source,
    build_train_source,
    open_prepared_tree,
    train_plan,
)
from alexserve.data.pil_loader import PilEvalSource, PilTrainSource
from alexserve.data.prefetch import prefetch
from alexserve.data.prepared_tree import CLASSES_FILE, STATS_FILE, DatasetError, list_prepared_split, read_class_index
from alexserve.data.raw_images import load_ten_crops
from helpers.datasets import checksum, folder_job, tiny_prepared_tree
from helpers.tensors import context

CPU = torch.device("cpu")
LOADERS = ["dali", "pil"]
# Both loaders decode with libjpeg-turbo (bit-identical here) and do the same float32 arithmetic: pixels agree to far
# better than a thousandth of a grey level.
PIXEL_ATOL = 1e-3


def by_hand(path: Path, mean: np.ndarray, x: int, y: int, size: int, flip: bool) -> torch.Tensor:
    img = np.asarray(Image.open(path).convert("RGB")).astype(np.float32) - mean
    patch = img[y : y + size, x : x + size]
    return torch.from_numpy(np.ascontiguousarray((patch[:, ::-1] if flip else patch).transpose(2, 0, 1)))


def assert_pixels(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=PIXEL_ATOL, check_dtype=False, msg=context(what))


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("input_size", [224, 64])
def test_train_batches_equal_crops_flips_lighting_cut_by_hand(loader, input_size):
    _, dst, _ = tiny_prepared_tree()
    job = folder_job(dst, loader=loader, batch_size=8, input_size=input_size, seed=5)
    tree = open_prepared_tree(job)
    files = list_prepared_split(tree.train_dir, tree.classes)
    params = train_plan(job, len(files), tree.stats, 0, 1).step_params(1, 0)
    source = build_train_source(job, device=CPU)
    checked = 0
    for step, (images, labels) in enumerate(source.batches(1)):
        assert images.shape == (8, 3, input_size, input_size) and images.dtype == torch.float32
        p = params[step]
        for i in range(8):
            f = files[p.file_indices[i]]
            assert labels[i] == f.label
            want = by_hand(f.path, tree.stats.mean_image, p.crop_x[i], p.crop_y[i], input_size, p.flip[i])
            want = want + torch.from_numpy(p.lighting[i])[:, None, None]
            assert_pixels(images[i], want, f"step {step} image {i} ({f.path.name})")
            checked += 1
        if step == 2:
            break
    source.close()
    assert checked == 24
    assert {bool(f) for prm in params for f in prm.flip} == {True, False}


@pytest.mark.parametrize("loader", LOADERS)
def test_ten_crop_and_center_equal_crops_cut_by_hand(loader):
    _, dst, _ = tiny_prepared_tree()
    job = folder_job(dst, loader=loader, batch_size=5, input_size=224)
    tree = open_prepared_tree(job)
    files = list_prepared_split(tree.val_dir, tree.classes)
    source = build_eval_source(job, device=CPU)
    corners = [(0, 0), (32, 0), (0, 32), (32, 32), (16, 16)]
    seen = 0
    for images, labels in source.batches("ten_crop"):
        assert images.shape[1:] == (10, 3, 224, 224)
        for i in range(len(labels)):
            f = files[seen]
            assert labels[i] == f.label
            for k, (x, y) in enumerate(corners + corners):
                want = by_hand(f.path, tree.stats.mean_image, x, y, 224, k >= 5)
                assert_pixels(images[i, k], want, f"crop {k} of {f.path.name}")
            seen += 1
    assert seen == source.num_images == len(files)
    seen = 0
    for images, labels in source.batches("center"):
        assert images.shape[1:] == (3, 224, 224)
        for i in range(len(labels)):
            want = by_hand(files[seen].path, tree.stats.mean_image, 16, 16, 224, False)
            assert_pixels(images[i], want, f"centre crop of {files[seen].path.name}")
            seen += 1
    assert seen == len(files)
    source.close()


@pytest.mark.parametrize("loader", LOADERS)
def test_two_towers_of_a_pair_get_identical_batches_other_ranks_disjoint(loader):
    _, dst, _ = tiny_prepared_tree()
    job = folder_job(dst, loader=loader, batch_size=4, input_size=64, seed=9)
    tower0, tower1 = build_train_source(job, device=CPU), build_train_source(job, device=CPU)
    a = [(checksum(x), y.tolist()) for x, y in tower0.batches(0)]
    b = [(checksum(x), y.tolist()) for x, y in tower1.batches(0)]
    assert len(a) == tower0.steps_per_epoch >= 5 and a == b
    rank0 = build_train_source(job, dp_rank=0, dp_size=2, device=CPU)
    rank1 = build_train_source(job, dp_rank=1, dp_size=2, device=CPU)
    assert rank0.steps_per_epoch == rank1.steps_per_epoch
    s0 = {checksum(x) for x, _ in rank0.batches(0)}
    s1 = {checksum(x) for x, _ in rank1.batches(0)}
    assert not s0 & s1
    for s in (tower0, tower1, rank0, rank1):
        s.close()


@pytest.mark.parametrize("loader", LOADERS)
def test_resume_equals_tail_of_uninterrupted_epoch(loader):
    _, dst, _ = tiny_prepared_tree()
    job = folder_job(dst, loader=loader, batch_size=4, input_size=64, seed=1)
    source = build_train_source(job, device=CPU)
    full = [checksum(x) for x, _ in source.batches(2)]
    # Abandon an iteration mid-way (as a crash would), then restart at step 3.
    it = source.batches(2)
    next(it)
    tail = [checksum(x) for x, _ in source.batches(2, 3)]
    assert tail == full[3:] and len(full) == source.steps_per_epoch
    assert [checksum(x) for x, _ in source.batches(3)] != full
    assert source.wait_seconds_total > 0
    source.close()


def test_dali_and_pil_loaders_produce_the_same_batches():
    _, dst, _ = tiny_prepared_tree()
    out = {}
    for loader in LOADERS:
        source = build_train_source(folder_job(dst, loader=loader, batch_size=4, input_size=224, seed=2), device=CPU)
        out[loader] = [(x, y) for x, y in source.batches(0)][:3]
        source.close()
    for step, ((xd, yd), (xp, yp)) in enumerate(zip(out["dali"], out["pil"], strict=True)):
        torch.testing.assert_close(yp, yd, rtol=0, atol=0, msg=context(f"labels of step {step}: PIL vs DALI"))
        assert_pixels(xp, xd, f"images of step {step}: PIL vs DALI")


def test_float64_jobs_get_float64_images():
    _, dst, _ = tiny_prepared_tree()
    job = folder_job(dst, batch_size=4, input_size=64)
    job.train.dtype = "float64"
    source = build_train_source(job, device=CPU)
    images, _ = next(iter(source.batches(0)))
    source.close()
    assert images.dtype == torch.float64


def test_raw_images_ten_crops_match_the_eval_loader(tmp_path: Path):
    _, dst, _ = tiny_prepared_tree()
    job = folder_job(dst, loader="pil", batch_size=2, input_size=224)
    tree = open_prepared_tree(job)
    files = list_prepared_split(tree.val_dir, tree.classes)[:2]
    crops = load_ten_crops([f.path for f in files], tree.stats.mean_image, 224)
    source = build_eval_source(job, device=CPU)
    images, _ = next(iter(source.batches("ten_crop")))
    source.close()
    assert crops.shape == (2, 10, 3, 224, 224)
    assert_pixels(crops, images, "load_ten_crops vs the eval loader's ten crops")
    (tmp_path / "bad.JPEG").write_bytes(b"")
    with pytest.raises(ValueError, match="bad.JPEG: zero-byte"):
        load_ten_crops([tmp_path / "bad.JPEG"], tree.stats.mean_image, 224)


def test_missing_stats_or_wrong_class_count_is_named(tmp_path: Path):
    _, dst, _ = tiny_prepared_tree()
    (tmp_path / "train").mkdir()
    (tmp_path / CLASSES_FILE).write_text((dst / CLASSES_FILE).read_text())
    with pytest.raises(DatasetError, match=r"stats\.npz.*alexserve prepare"):
        build_train_source(folder_job(tmp_path), device=CPU)
    job = folder_job(dst)
    job.model.num_classes = 7
    with pytest.raises(DatasetError, match="4 classes but model.num_classes is 7"):
        build_train_source(job, device=CPU)
    assert len(read_class_index(dst / CLASSES_FILE)) == 4 and (dst / STATS_FILE).is_file()


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("prefetch_batches", [1, 4])
def test_dali_runs_pipelined_and_every_batch_is_the_plans_in_order(prefetch_batches):
    """The asynchronous, pipelined executor (two or more batches in flight) still hands out batch k of the plan
    as batch k, for a whole epoch, for two epochs in a row and from a mid-epoch start."""
    _, dst, _ = tiny_prepared_tree()
    job = folder_job(dst, batch_size=4, input_size=64, seed=6, prefetch_batches=prefetch_batches)
    tree = open_prepared_tree(job)
    files = list_prepared_split(tree.train_dir, tree.classes)
    plan = train_plan(job, len(files), tree.stats, 0, 1)
    dali = build_train_source(job, device=CPU)
    pil = build_train_source(job.model_copy(update={"data": job.data.model_copy(update={"loader": "pil"})}), device=CPU)
    for epoch, start in ((0, 0), (1, 0), (1, 4)):
        got = list(dali.batches(epoch, start))
        want = list(pil.batches(epoch, start))
        params = plan.step_params(epoch, start)
        assert len(got) == len(want) == len(params) == plan.steps_per_epoch - start >= 6
        for step, ((xd, yd), (xp, _), p) in enumerate(zip(got, want, params)):
            assert yd.tolist() == [files[i].label for i in p.file_indices], f"epoch {epoch} step {start + step}"
            assert_pixels(xd, xp, f"epoch {epoch} step {start + step}: DALI vs PIL")
    pipe = dali._pipeline._pipe
    assert pipe.exec_pipelined and pipe.exec_async and pipe.prefetch_queue_depth >= 2
    assert pipe.prefetch_queue_depth == max(2, prefetch_batches)
    dali.close()
    pil.close()


def test_dali_eval_pipeline_is_pipelined_too():
    _, dst, _ = tiny_prepared_tree()
    source = build_eval_source(folder_job(dst, batch_size=5, input_size=224), device=CPU)
    labels = [y for _, y in source.batches("center")]
    again = [y for _, y in source.batches("center")]
    assert torch.cat(labels).tolist() == torch.cat(again).tolist() and sum(map(len, labels)) == source.num_images
    pipe = source._pipes["center"]._pipe
    assert pipe.exec_pipelined and pipe.exec_async and pipe.prefetch_queue_depth >= 2
    source.close()


def test_a_generator_abandoned_midway_is_closed_on_the_loader_thread():
    """A DALI pass left midway cleans up (drops its pipeline) on the thread that ran it, the one whose CUDA device
    is set, before `prefetch` returns."""
    closed_on = []

    def produce():
        try:
            yield from range(100)
        finally:
            closed_on.append(threading.current_thread().name)

    it = prefetch(produce(), 2, lambda _seconds: None)
    assert next(it) == 0
    it.close()
    assert closed_on == ["alexserve-prefetch"]


def dali_missing(monkeypatch) -> None:
    monkeypatch.setattr(factory, "dali_import_error", lambda: ImportError("No module named 'nvidia.dali'"))


def test_dali_missing_on_a_gpu_is_an_error_that_names_the_fix(monkeypatch):
    _, dst, _ = tiny_prepared_tree()
    dali_missing(monkeypatch)
    gpu = torch.device("cuda", 0)  # never touched: the error comes before anything is built
    job = folder_job(dst, batch_size=4, input_size=64)
    for build in (lambda: build_train_source(job, device=gpu), lambda: build_eval_source(job, device=gpu)):
        with pytest.raises(LoaderUnavailableError, match=r"nvidia-dali-cuda120.*data\.loader: pil") as err:
            build()
        assert "No module named 'nvidia.dali'" in str(err.value) and "cuda:0" in str(err.value)
    assert issubclass(LoaderUnavailableError, DatasetError)  # the worker exits 2 with the message


def test_pil_asked_for_by_name_runs_on_a_gpu_and_dali_missing_on_cpu_falls_back_with_a_warning(monkeypatch):
    _, dst, _ = tiny_prepared_tree()
    dali_missing(monkeypatch)
    job = folder_job(dst, loader="pil", batch_size=4, input_size=64)
    gpu = torch.device("cuda", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(build_train_source(job, device=gpu), PilTrainSource)
        assert isinstance(build_eval_source(job, device=gpu), PilEvalSource)
    with pytest.warns(UserWarning, match="DALI does not import.*using the PIL loader"):
        source = build_train_source(folder_job(dst, loader="dali", batch_size=4, input_size=64), device=CPU)
    assert isinstance(source, PilTrainSource)
    source.close()


@CUDA
@pytest.mark.parametrize("loader", LOADERS)
def test_on_a_gpu_batches_equal_the_cpu_loaders(loader):
    """DALI's `mixed` (nvJPEG) decode and the pinned, non-blocking copies give the CPU path's batches."""
    _, dst, _ = tiny_prepared_tree()
    job = folder_job(dst, loader=loader, batch_size=4, input_size=64, seed=2)
    gpu = torch.device("cuda", 0)
    on_cpu, on_gpu = build_train_source(job, device=CPU), build_train_source(job, device=gpu)
    for step, ((xc, yc), (xg, yg)) in enumerate(zip(on_cpu.batches(0), on_gpu.batches(0))):
        assert xg.device == yg.device == gpu
        torch.testing.assert_close(yg.cpu(), yc, rtol=0, atol=0, msg=context(f"labels of step {step}"))
        # nvJPEG and libjpeg-turbo round the IDCT and chroma upsampling differently: a grey level or so on average
        # (the doctor's criterion); a wrong crop, flip or lighting moves the mean by tens of levels.
        assert float((xg.cpu() - xc).abs().mean()) <= 2.0, f"images of step {step}"
    on_cpu.close()
    on_gpu.close()


@CUDA
def test_labels_come_from_pinned_memory_on_a_gpu():
    from alexserve.data.dali_loader import labels_to_device
    from alexserve.data.pil_loader import to_device

    gpu = torch.device("cuda", 0)
    labels = labels_to_device(np.arange(5), gpu)
    torch.cuda.synchronize()
    assert labels.device == gpu and labels.tolist() == list(range(5))
    images, labels = to_device(torch.ones(2, 3).pin_memory(), torch.arange(2).pin_memory(), gpu, torch.float32)
    torch.cuda.synchronize()
    assert images.device == labels.device == gpu and float(images.sum()) == 6.0
