"""DALI and PIL loaders against pixels cut by hand from the same plan.

Towers in separate processes are in tests/integration/test_data_loaders_across_processes.py.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexserve.data.factory import build_eval_source, build_train_source, open_prepared_tree
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
    from alexserve.data.factory import train_plan

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
