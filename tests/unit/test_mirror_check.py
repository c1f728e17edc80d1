"""Whether mirroring keeps an image's class: measured on real digits, a mirror-symmetric world and noise."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import load_digits

from alexserve.data.mirror_check import MIRROR_CHECK_FILE, MirrorAccumulator, MirrorCheck
from alexserve.data.prepared_tree import DatasetError


def _rgb(image: np.ndarray) -> np.ndarray:
    """A [h, w] image in 0..1 as the [4h, 4w, 3] uint8 RGB a prepared tree holds."""
    big = np.kron(image, np.ones((4, 4)))
    return np.repeat((big * 255).astype(np.uint8)[:, :, None], 3, axis=2)


def _check(images: list[np.ndarray], labels: list[int]) -> MirrorCheck:
    acc = MirrorAccumulator()
    for index, (image, label) in enumerate(zip(images, labels)):
        acc.add(f"class{label}", f"{label}/{index:05d}", _rgb(image))
    return acc.finish()


def test_real_digits_lose_their_class_when_mirrored():
    digits = load_digits()
    check = _check(list(digits.images / 16.0), list(digits.target))
    assert check.informative
    assert check.nearest_mean_accuracy > 0.8
    assert check.kept_margin < 0.4, check
    assert not check.mirroring_keeps_class


def test_a_world_where_each_thing_faces_either_way_keeps_its_class():
    """Asymmetric prototypes, each image mirrored at random, as photos of objects that face left or right."""
    rng = np.random.default_rng(0)
    prototypes = rng.random((6, 8, 8)) ** 3
    images, labels = [], []
    for label, prototype in enumerate(prototypes):
        for _ in range(60):
            image = np.clip(prototype + rng.normal(0, 0.15, prototype.shape), 0, 1)
            images.append(image[:, ::-1] if rng.random() < 0.5 else image)
            labels.append(label)
    check = _check(images, labels)
    assert check.informative and check.kept_margin > 0.8, check
    assert check.mirroring_keeps_class


def test_the_same_prototypes_facing_one_way_lose_their_class():
    rng = np.random.default_rng(0)
    prototypes = rng.random((6, 8, 8)) ** 3
    images = [np.clip(p + rng.normal(0, 0.15, p.shape), 0, 1) for p in prototypes for _ in range(60)]
    check = _check(images, [label for label in range(6) for _ in range(60)])
    assert not check.mirroring_keeps_class, check


def test_classes_the_check_cannot_tell_apart_keep_the_papers_flips():
    rng = np.random.default_rng(1)
    images = [rng.random((8, 8)) for _ in range(300)]
    check = _check(images, [i % 5 for i in range(300)])
    assert not check.informative
    assert check.mirroring_keeps_class


def test_partial_accumulators_merge_to_the_same_check_in_any_order():
    digits = load_digits()
    items = [(f"c{t}", f"c{t}/{i:05d}", _rgb(im / 16.0)) for i, (im, t) in enumerate(zip(digits.images, digits.target))]
    whole = MirrorAccumulator()
    for item in items:
        whole.add(*item)
    parts = [MirrorAccumulator() for _ in range(3)]
    for index, item in enumerate(items):
        parts[index % 3].add(*item)
    merged = MirrorAccumulator()
    for part in reversed(parts):
        merged.merge(part)
    assert merged.finish() == whole.finish()


def test_the_saved_check_loads_and_damage_is_named(tmp_path):
    assert MirrorCheck.load(tmp_path / MIRROR_CHECK_FILE) is None  # a tree prepared before the check
    check = MirrorCheck(nearest_mean_accuracy=0.9, mirrored_accuracy=0.3, chance=0.1, images=200)
    check.save(tmp_path / MIRROR_CHECK_FILE)
    assert MirrorCheck.load(tmp_path / MIRROR_CHECK_FILE) == check
    for bad in ('{"nearest_mean_accuracy": 0.9}', "not json", json.dumps({**check.__dict__, "chance": float("nan")})):
        (tmp_path / MIRROR_CHECK_FILE).write_text(bad)
        with pytest.raises(DatasetError, match=MIRROR_CHECK_FILE):
            MirrorCheck.load(tmp_path / MIRROR_CHECK_FILE)
