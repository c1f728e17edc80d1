from pathlib import Path

import numpy as np
from PIL import Image

from alexserve.cli.synth import main
from alexserve.data.synth import generate, synset_id


def test_layout_sizes_and_labels(tmp_path: Path):
    generate(tmp_path, num_classes=3, train_per_class=5, val_per_class=2, seed=1, min_side=40, max_side=120)
    classes = sorted(p.name for p in (tmp_path / "train").iterdir())
    assert classes == [synset_id(k) for k in range(3)]
    sizes = set()
    for path in (tmp_path / "train").rglob("*.JPEG"):
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            sizes.add(img.size)
            assert 40 <= min(img.size) <= 120
    assert len(sizes) >= 10, "sizes and aspect ratios must vary"
    assert len({round(w / h, 1) for w, h in sizes}) >= 5
    labels = dict(line.split() for line in (tmp_path / "val_labels.txt").read_text().splitlines())
    assert sorted(labels) == sorted(p.name for p in (tmp_path / "val").iterdir())
    assert sorted(set(labels.values())) == classes
    assert len((tmp_path / "synset_words.txt").read_text().splitlines()) == 3


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate(
            tmp_path / name, num_classes=2, train_per_class=2, val_per_class=0, seed=seed, min_side=32, max_side=64
        )
    f = Path("train") / synset_id(1) / f"{synset_id(1)}_1.JPEG"
    assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert (tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes()


def test_classes_separable_from_small_crops(tmp_path: Path):
    """A cheap proxy for learnability: nearest class mean of 64-px crop colour + stripe direction already
    classifies most crops; a convnet has far more to go on."""
    generate(tmp_path, num_classes=10, train_per_class=12, val_per_class=0, seed=2, min_side=64, max_side=128)
    rng = np.random.default_rng(0)

    def features(path: Path) -> np.ndarray:
        arr = np.asarray(Image.open(path).convert("RGB"), np.float32)
        y, x = rng.integers(0, arr.shape[0] - 63), rng.integers(0, arr.shape[1] - 63)
        crop = arr[y : y + 64, x : x + 64]
        gray = crop.mean(2)
        gx, gy = np.diff(gray, axis=1)[:-1], np.diff(gray, axis=0)[:, :-1]
        angle2 = np.arctan2(2 * (gx * gy).sum(), ((gx**2) - (gy**2)).sum())  # doubled dominant gradient angle
        return np.concatenate([crop.reshape(-1, 3).mean(0) / 40, [3 * np.cos(angle2), 3 * np.sin(angle2)]])

    feats = {k: [features(p) for p in sorted((tmp_path / "train" / synset_id(k)).iterdir())] for k in range(10)}
    centroids = np.stack([np.mean(v[:6], 0) for v in feats.values()])
    correct = total = 0
    for k, v in feats.items():
        for f in v[6:]:
            correct += int(np.argmin(((centroids - f) ** 2).sum(1)) == k)
            total += 1
    assert correct / total >= 0.85, f"only {correct}/{total} crops classified"


def test_cli_rejects_bad_arguments(tmp_path: Path, capsys):
    try:
        main([str(tmp_path / "x"), "--min-side", "100", "--max-side", "50"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("expected a usage error")
    assert "--min-side" in capsys.readouterr().err
