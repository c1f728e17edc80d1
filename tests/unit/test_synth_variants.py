"""`alexserve synth --variant`: the same textures with other pixel statistics; standard is unchanged."""

import colorsys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexserve.cli.synth import main
from alexserve.data import synth
from alexserve.data.synth import VARIANTS, generate, render, synset_id


def render_before_variants(class_index: int, rng: np.random.Generator, min_side: int, max_side: int) -> np.ndarray:
    """`synth.render` as it was before variants existed (commit 4e0719b), frozen here as the reference."""
    hue, angle, period = synth.class_style(class_index)
    shorter = int(rng.integers(min_side, max_side + 1))
    aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.8))))
    h, w = (shorter, round(shorter * aspect)) if aspect >= 1 else (round(shorter / aspect), shorter)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    jitter_angle = angle + rng.normal(0, 0.08)
    wave = np.sin(
        2 * np.pi * (xx * np.cos(jitter_angle) + yy * np.sin(jitter_angle)) / (period * shorter)
        + rng.uniform(0, 2 * np.pi)
    )
    r, g, b = colorsys.hsv_to_rgb((hue + rng.normal(0, 0.02)) % 1.0, rng.uniform(0.55, 0.9), rng.uniform(0.55, 0.95))
    colour = np.array([r, g, b], np.float32) * 255
    dark = colour * rng.uniform(0.25, 0.5)
    img = dark + (colour - dark) * (0.5 + 0.5 * wave)[..., None]
    img *= rng.uniform(0.8, 1.2)
    img += rng.normal(0, 14, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_standard_pixels_are_unchanged():
    for seed in (0, 7):
        for split in (0, 1):
            for k in range(4):
                for i in range(2):
                    before = render_before_variants(k, np.random.default_rng([seed, split, k, i]), 32, 96)
                    now = render(k, np.random.default_rng([seed, split, k, i]), 32, 96)
                    assert np.array_equal(before, now), f"standard pixels changed for seed {seed} class {k} image {i}"


def written_pixels(root: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p), np.float32) for p in sorted(root.rglob("*.JPEG"))]


@pytest.fixture(scope="module")
def variant_trees(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("variants")
    for variant in VARIANTS:
        generate(
            root / variant,
            num_classes=10,
            train_per_class=3,
            val_per_class=1,
            seed=4,
            min_side=48,
            max_side=96,
            variant=variant,
        )
    return {variant: root / variant for variant in VARIANTS}


def test_pixel_statistics_differ_as_intended(variant_trees):
    stats = {}
    for variant, root in variant_trees.items():
        images = written_pixels(root)
        assert len(images) == 40
        stats[variant] = (np.mean([a.mean() for a in images]), np.mean([a.std() for a in images]))
    standard_mean, standard_std = stats["standard"]
    assert 60 < standard_mean < 120 and standard_std > 40, stats
    assert stats["low-contrast"][1] < 0.3 * standard_std, stats
    assert abs(stats["low-contrast"][0] - standard_mean) < 10, stats  # contrast only, not brightness
    assert stats["dark"][0] < 70, stats
    assert stats["bright"][0] > 185, stats
    for variant in ("dark", "bright", "grayscale"):
        assert stats[variant][1] > 10, f"{variant} must keep visible stripes: {stats}"
    for image in written_pixels(variant_trees["grayscale"]):
        assert np.abs(image[..., 0] - image[..., 1]).max() <= 1 and np.abs(image[..., 1] - image[..., 2]).max() <= 1
    assert max(np.abs(a[..., 0] - a[..., 2]).max() for a in written_pixels(variant_trees["standard"])) > 50


def test_variants_keep_the_layout_and_the_textures(variant_trees):
    """Same files and image sizes in every variant: only the pixel values differ."""

    def sizes(root: Path) -> dict[str, tuple[int, int]]:
        return {str(p.relative_to(root)): Image.open(p).size for p in sorted(root.rglob("*.JPEG"))}

    standard = sizes(variant_trees["standard"])
    for variant, root in variant_trees.items():
        assert sizes(root) == standard, variant
        assert (root / "val_labels.txt").read_text() == (variant_trees["standard"] / "val_labels.txt").read_text()


def test_same_arguments_same_bytes(tmp_path: Path):
    f = Path("train") / synset_id(1) / f"{synset_id(1)}_1.JPEG"
    for variant in VARIANTS:
        for name in ("a", "b"):
            generate(
                tmp_path / variant / name,
                num_classes=2,
                train_per_class=2,
                val_per_class=0,
                seed=5,
                min_side=32,
                max_side=64,
                variant=variant,
            )
        assert (tmp_path / variant / "a" / f).read_bytes() == (tmp_path / variant / "b" / f).read_bytes(), variant
    assert len({(tmp_path / variant / "a" / f).read_bytes() for variant in VARIANTS}) == len(VARIANTS)


def crop_features(path: Path) -> np.ndarray:
    """Mean and spread per channel, stripe orientation and frequency of a 64-px centre crop after scaling the
    shorter side to 64 (as `prepare` scales every image)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        scale = 64 / min(img.size)
        img = img.resize((max(64, round(img.size[0] * scale)), max(64, round(img.size[1] * scale))), Image.BILINEAR)
    arr = np.asarray(img, np.float32)
    y, x = (arr.shape[0] - 64) // 2, (arr.shape[1] - 64) // 2
    crop = arr[y : y + 64, x : x + 64]
    gray = crop.mean(2)
    window = np.hanning(64)[:, None] * np.hanning(64)[None, :]
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2((gray - gray.mean()) * window)))
    spectrum[:, :32] = 0  # a real image's spectrum is symmetric: keep one half plane
    fy, fx = np.unravel_index(np.argmax(spectrum), spectrum.shape)
    angle2 = 2 * np.arctan2(fy - 32, fx - 32)
    flat = crop.reshape(-1, 3)
    return np.concatenate([flat.mean(0), flat.std(0), [np.cos(angle2), np.sin(angle2), np.hypot(fx - 32, fy - 32)]])


def test_every_variant_is_separable(tmp_path: Path):
    """A cheap proxy for 'learnable in principle': an SVM on nine hand-made features of a centre crop.
    Grayscale loses the hue and scores lowest (~0.85 here); a convnet has far more to go on."""
    pytest.importorskip("sklearn")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    for variant in VARIANTS:
        generate(
            tmp_path / variant,
            num_classes=10,
            train_per_class=16,
            val_per_class=0,
            seed=2,
            min_side=64,
            max_side=128,
            variant=variant,
        )
        features, labels = [], []
        for k in range(10):
            for path in sorted((tmp_path / variant / "train" / synset_id(k)).iterdir()):
                features.append(crop_features(path))
                labels.append(k)
        features, labels = np.array(features), np.array(labels)
        fit = np.arange(len(labels)) % 16 < 10
        classifier = make_pipeline(StandardScaler(), SVC()).fit(features[fit], labels[fit])
        accuracy = classifier.score(features[~fit], labels[~fit])
        assert accuracy >= 0.75, f"{variant}: only {accuracy:.2f} of held-out images classified"


def test_cli_variant(tmp_path: Path, capsys):
    assert (
        main(
            [
                str(tmp_path / "d"),
                "--classes",
                "2",
                "--train-per-class",
                "1",
                "--val-per-class",
                "0",
                "--min-side",
                "32",
                "--max-side",
                "40",
                "--variant",
                "dark",
            ]
        )
        == 0
    )
    assert "dark" in capsys.readouterr().err
    (image,) = written_pixels(tmp_path / "d" / "train" / synset_id(1))
    assert image.mean() < 70
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "x"), "--variant", "sepia"])
    assert exit_info.value.code == 2
    assert "--variant" in capsys.readouterr().err
    with pytest.raises(ValueError, match="sepia"):
        generate(tmp_path / "y", num_classes=1, train_per_class=1, val_per_class=0, variant="sepia")
