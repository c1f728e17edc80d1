"""A learnable ImageNet-like JPEG dataset, the embedded default for the demo and tests (`alexserve synth`).

Layout (the same as ImageNet's, so `prepare` treats it like the real thing):

    DST/train/<synset>/<synset>_<i>.JPEG
    DST/val/ILSVRC2012_val_<i>.JPEG + DST/val_labels.txt   ("<file> <synset>" per line; --val-layout flat, default)
    DST/val/<synset>/...                                   (--val-layout folders)
    DST/synset_words.txt                                   ("<synset> <name>" per line, like Caffe's file)

Each class is a striped texture with its own hue, stripe angle and stripe period,
under per-image noise, brightness, phase and hue jitter, at varied sizes and aspect
ratios. The pattern fills the whole image, so any crop of the prepared 256x256 image
(even 64 px) shows several stripe periods: a small convnet separates ~10 classes to
a few percent error within minutes of CPU training.

`--variant` keeps those textures (the same seed draws the same ones) and changes
only their pixel statistics, to check that a training recipe does not depend on
the statistics of one data set:

    standard      mean ~85, std ~55 per image (the default; its pixels never change)
    low-contrast  washed out, every value pulled towards the image's mean level: std ~11
    grayscale     R = G = B = luminance: mean ~83, std ~30 (the classes still differ in stripe angle and period)
    dark          underexposed, 0.3x the standard values: mean ~25, std ~16
    bright        overexposed, 0.3x the standard distance to white: mean ~205, std ~16
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image

GOLDEN = 0.6180339887


def synset_id(class_index: int) -> str:
    """ImageNet-like WordNet id ('n' + 8 digits), distinct per class and sorted in class order."""
    return f"n{90000000 + class_index:08d}"


def class_style(class_index: int) -> tuple[float, float, float]:
    """(hue 0..1, stripe angle radians, stripe period as a fraction of the shorter side)."""
    hue = (class_index * GOLDEN) % 1.0
    angle = ((class_index * 0.381966 * 7) % 1.0) * np.pi
    period = (10 + (class_index * 7) % 17) / 256.0
    return hue, angle, period


def class_name(class_index: int) -> str:
    hue, angle, period = class_style(class_index)
    return f"stripes hue {hue * 360:.0f} deg, angle {np.degrees(angle):.0f} deg, period {period * 256:.0f}/256"


# Each variant maps the standard texture (float32 HxWx3 on the 0..255 scale, before
# clipping) to its own; none draws random numbers, so every variant of a seed shows
# the same textures. The factor 0.3 keeps the stripes (~60 levels peak to peak in
# standard) well above JPEG's quantisation at quality 90.
EXPOSURE = 0.3
LOW_CONTRAST = 0.2
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as PIL's convert("L")


def _low_contrast(img: np.ndarray) -> np.ndarray:
    """Washed out: every value pulled towards the image's mean level, stripes and colour alike."""
    mean_level = img.mean()
    return mean_level + (img - mean_level) * LOW_CONTRAST


def _grayscale(img: np.ndarray) -> np.ndarray:
    return np.repeat((img @ LUMA)[..., None], 3, axis=2)


VARIANTS = {
    "standard": lambda img: img,
    "low-contrast": _low_contrast,
    "grayscale": _grayscale,
    "dark": lambda img: img * EXPOSURE,
    "bright": lambda img: 255 - (255 - img) * EXPOSURE,
}


def render(
    class_index: int, rng: np.random.Generator, min_side: int, max_side: int, variant: str = "standard"
) -> np.ndarray:
    """One HxWx3 uint8 image of class `class_index`, with the pixel statistics of `variant` (see VARIANTS)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown synth variant {variant!r}; choose from {', '.join(VARIANTS)}")
    img = VARIANTS[variant](_standard_texture(class_index, rng, min_side, max_side))
    return np.clip(img, 0, 255).astype(np.uint8)


def _standard_texture(class_index: int, rng: np.random.Generator, min_side: int, max_side: int) -> np.ndarray:
    """The standard image as float32 before clipping; all of the image's random draws happen here."""
    hue, angle, period = class_style(class_index)
    shorter = int(rng.integers(min_side, max_side + 1))
    aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.8))))  # width / height, as varied as ImageNet's
    h, w = (shorter, round(shorter * aspect)) if aspect >= 1 else (round(shorter / aspect), shorter)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    jitter_angle = angle + rng.normal(0, 0.08)
    along = xx * np.cos(jitter_angle) + yy * np.sin(jitter_angle)
    wave = np.sin(2 * np.pi * along / (period * shorter) + rng.uniform(0, 2 * np.pi))
    r, g, b = colorsys.hsv_to_rgb((hue + rng.normal(0, 0.02)) % 1.0, rng.uniform(0.55, 0.9), rng.uniform(0.55, 0.95))
    colour = np.array([r, g, b], np.float32) * 255
    dark = colour * rng.uniform(0.25, 0.5)
    img = dark + (colour - dark) * (0.5 + 0.5 * wave)[..., None]
    img *= rng.uniform(0.8, 1.2)
    img += rng.normal(0, 14, img.shape)
    return img


def _save(img: np.ndarray, path: Path, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, "JPEG", quality=quality)


def generate(
    dst: Path,
    *,
    num_classes: int = 10,
    train_per_class: int = 260,
    val_per_class: int = 50,
    seed: int = 0,
    min_side: int = 96,
    max_side: int = 320,
    val_layout: str = "flat",
    quality: int = 90,
    variant: str = "standard",
) -> None:
    """Write the dataset under `dst`; the same arguments always give the same pixels."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown synth variant {variant!r}; choose from {', '.join(VARIANTS)}")
    dst = Path(dst)
    for k in range(num_classes):
        for i in range(train_per_class):
            rng = np.random.default_rng([seed, 0, k, i])
            path = dst / "train" / synset_id(k) / f"{synset_id(k)}_{i}.JPEG"
            _save(render(k, rng, min_side, max_side, variant), path, quality)
    labels = []
    for k in range(num_classes):
        for i in range(val_per_class):
            rng = np.random.default_rng([seed, 1, k, i])
            img = render(k, rng, min_side, max_side, variant)
            if val_layout == "flat":
                # ILSVRC numbers val images 1..50000 across classes; interleave classes the same way.
                name = f"ILSVRC2012_val_{i * num_classes + k + 1:08d}.JPEG"
                _save(img, dst / "val" / name, quality)
                labels.append((name, synset_id(k)))
            else:
                _save(img, dst / "val" / synset_id(k) / f"{synset_id(k)}_val_{i}.JPEG", quality)
    if val_layout == "flat" and labels:
        (dst / "val_labels.txt").write_text("".join(f"{n} {s}\n" for n, s in sorted(labels)))
    (dst / "synset_words.txt").write_text("".join(f"{synset_id(k)} {class_name(k)}\n" for k in range(num_classes)))
