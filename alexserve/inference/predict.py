"""The top classes of raw images, with probabilities (`alexserve predict`).

Runs the paper's test-time path on images of any size: shorter side to the
training scale, central square, minus the training mean image, ten crops, the
softmax averaged over them. The model is a file written by `alexserve export`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alexserve.data.augment import tested_patches
from alexserve.data.imageops import DEFAULT_MAX_IMAGE_PIXELS
from alexserve.data.raw_images import load_ten_crops
from alexserve.inference.saved_model import exported_test_time_mirrors
from alexserve.model.exported import ExportError, load_exported


@dataclass(frozen=True)
class RankedClass:
    index: int
    label: str  # "name (synset)", the synset alone, or "class N" when the file names no classes
    probability: float


def predict(
    model,
    mean_image: np.ndarray,
    paths: list[Path],
    top: int = 5,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    mirrors: bool = True,
) -> list[list[tuple[int, float]]]:
    """(class index, probability) of the `top` most likely classes of each image, most likely first.

    Without `mirrors` (a model trained without flips) the five mirrored crops are left out.
    """
    crops = load_ten_crops(paths, mean_image, model.cfg.input_size, max_pixels)
    crops = tested_patches(crops, mirrors)
    with torch.no_grad():
        n, per_image = crops.shape[:2]
        probs = model(crops.flatten(0, 1)).softmax(dim=1).view(n, per_image, -1).mean(dim=1)
    values, indices = probs.topk(min(top, probs.shape[1]), dim=1)
    return [[(int(i), float(v)) for i, v in zip(row_i, row_v)] for row_i, row_v in zip(indices, values)]


def class_labels(meta: dict[str, Any]) -> dict[int, str]:
    """Index -> "name (synset)", or the synset alone where the two are the same."""
    return {
        c["index"]: f"{c['name']} ({c['synset']})" if c["name"] != c["synset"] else c["synset"]
        for c in meta.get("classes", [])
    }


def predict_files(
    model_path: Path, images: list[Path], top: int = 5, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> list[list[RankedClass]]:
    """The `top` classes of each image by the exported model at `model_path`.

    Raises `ExportError` for a file that is not an intact export (its SHA-256 and contents
    are checked) or has no mean image, and `ValueError` for an image that cannot be read or
    has more than `max_pixels` pixels.
    """
    model, meta = load_exported(model_path)
    if "mean_image" not in meta:
        raise ExportError(f"{model_path} has no mean image (its job did not train on a prepared tree)")
    labels = class_labels(meta)
    ranked = predict(model, meta["mean_image"].numpy(), images, top, max_pixels, exported_test_time_mirrors(meta))
    return [[RankedClass(i, labels.get(i, f"class {i}"), p) for i, p in row] for row in ranked]
