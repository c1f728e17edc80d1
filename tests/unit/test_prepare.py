import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexserve.cli.prepare import main
from alexserve.data.prepare import prepare
from alexserve.data.prepared_tree import (
    CLASSES_FILE,
    JOURNAL_FILE,
    REPORT_FILE,
    STATS_FILE,
    list_prepared_split,
    read_class_index,
)
from alexserve.data.stats import DatasetStats
from alexserve.data.synth import generate, synset_id
from helpers.datasets import NUM_CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, folder_job, tiny_prepared_tree


def test_every_bad_file_is_reported_with_its_reason():
    src, dst, bad = tiny_prepared_tree()
    report = json.loads((dst / REPORT_FILE).read_text())
    listed = {Path(r["src"]).name: r for r in report["converted"] + report["rejected"]}
    for name, fragment in bad.items():
        assert name in listed, f"{name} silently dropped"
        assert fragment in listed[name]["reason"], (name, listed[name]["reason"])
    rejected = {Path(r["src"]).name for r in report["rejected"]}
    assert rejected == {"zero.JPEG", "truncated.JPEG", "text.JPEG"}
    # Nothing dropped silently: every input is ok, converted or rejected.
    assert report["inputs"] == report["ok"] + len(report["converted"]) + len(report["rejected"])
    assert report["inputs"] == NUM_CLASSES * (TRAIN_PER_CLASS + VAL_PER_CLASS) + len(bad)


def test_prepared_images_are_256_rgb_and_converted_ones_exist():
    src, dst, bad = tiny_prepared_tree()
    report = json.loads((dst / REPORT_FILE).read_text())
    for r in report["converted"]:
        with Image.open(r["dst"]) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (256, 256))
    for r in report["rejected"]:
        assert not Path(r["dst"]).exists()
    classes = read_class_index(dst / CLASSES_FILE)
    files = list_prepared_split(dst / "train", classes)
    assert len(files) == NUM_CLASSES * TRAIN_PER_CLASS + len(bad) - 3
    assert not {f.path.name for f in files} & {"zero.JPEG", "truncated.JPEG", "text.JPEG"}
    for f in files[:: max(1, len(files) // 8)]:
        with Image.open(f.path) as img:
            assert img.size == (256, 256)


def test_flat_val_is_sorted_into_class_folders_and_names_kept():
    src, dst, _ = tiny_prepared_tree()
    classes = read_class_index(dst / CLASSES_FILE)
    assert [c.synset for c in classes] == [synset_id(k) for k in range(NUM_CLASSES)]
    assert classes[1].name.startswith("stripes hue")
    labels = dict(line.split() for line in (src / "val_labels.txt").read_text().splitlines())
    val = list_prepared_split(dst / "val", classes)
    assert len(val) == NUM_CLASSES * VAL_PER_CLASS
    for f in val:
        assert labels[f.path.name] == classes[f.label].synset


def test_mean_image_and_pca_equal_numpy():
    _, dst, _ = tiny_prepared_tree()
    stats = DatasetStats.load(dst / STATS_FILE)
    files = list_prepared_split(dst / "train", read_class_index(dst / CLASSES_FILE))
    images = np.stack([np.asarray(Image.open(f.path).convert("RGB"), np.float64) for f in files])
    assert stats.num_images == len(files)
    np.testing.assert_allclose(stats.mean_image, images.mean(0), atol=1e-3)
    pixels = images.reshape(-1, 3) / 255.0
    cov = np.cov(pixels, rowvar=False, bias=True)
    np.testing.assert_allclose(stats.rgb_covariance, cov, rtol=1e-6, atol=1e-10)
    values, vectors = np.linalg.eigh(cov)
    np.testing.assert_allclose(stats.rgb_eigenvalues, values[::-1], rtol=1e-6)
    for i in range(3):  # eigenvectors up to sign
        v = vectors[:, 2 - i]
        assert abs(abs(float(v @ stats.rgb_eigenvectors[:, i])) - 1) < 1e-6
    rebuilt = stats.rgb_eigenvectors @ np.diag(stats.rgb_eigenvalues) @ stats.rgb_eigenvectors.T
    np.testing.assert_allclose(rebuilt, cov, atol=1e-10)


@pytest.mark.parametrize("loader", ["dali", "pil"])
def test_training_over_prepared_tree_never_sees_a_bad_file(loader):
    _, dst, _ = tiny_prepared_tree()
    from alexserve.data.factory import build_train_source

    source = build_train_source(folder_job(dst, loader=loader, batch_size=8, input_size=64), device=torch.device("cpu"))
    seen = 0
    for images, labels in source.batches(0):
        assert torch.isfinite(images).all()
        assert labels.min() >= 0 and labels.max() < NUM_CLASSES
        seen += len(labels)
    source.close()
    assert seen == source.steps_per_epoch * 8 > 0


def test_rerun_redoes_only_missing_work(tmp_path: Path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    generate(
        src, num_classes=2, train_per_class=4, val_per_class=1, seed=0, min_side=40, max_side=80, val_layout="folders"
    )
    (src / "train" / synset_id(0) / "empty.JPEG").write_bytes(b"")
    first = prepare(src, dst, scale_size=64, workers=1)
    outputs = sorted((dst / "train").rglob("*.JPEG"))
    stamps = {p: p.stat().st_mtime_ns for p in outputs}
    victim = outputs[0]
    victim.unlink()
    with open(dst / JOURNAL_FILE, "a") as f:
        f.write('{"src": "torn')  # an interrupted run can leave half a line
    os.utime(outputs[1], ns=(1, 1))
    stamps[outputs[1]] = 1
    second = prepare(src, dst, scale_size=64, workers=1)
    assert victim.is_file()
    for p in outputs[1:]:
        assert p.stat().st_mtime_ns == stamps[p], f"{p} was redone"
    assert second["rejected"] == first["rejected"] and len(second["rejected"]) == 1
    assert second["train_images"] == first["train_images"] == 8


def test_cli_names_a_missing_train_folder(tmp_path: Path, capsys):
    (tmp_path / "src").mkdir()
    assert main([str(tmp_path / "src"), str(tmp_path / "dst"), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "no train/ folder" in err and str(tmp_path / "src") in err


def test_cli_progress_and_summary(tmp_path: Path, capsys):
    src = tmp_path / "src"
    generate(src, num_classes=2, train_per_class=2, val_per_class=1, seed=0, min_side=32, max_side=48)
    assert main([str(src), str(tmp_path / "dst"), "--workers", "1", "--scale-size", "40"]) == 0
    err = capsys.readouterr().err
    assert "ETA" in err and "6 inputs: 6 ok" in err
    assert DatasetStats.load(tmp_path / "dst" / STATS_FILE).mean_image.shape == (40, 40, 3)
    shutil.rmtree(tmp_path / "dst")
