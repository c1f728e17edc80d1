"""The classical baseline of `bench.learning`: scikit-learn's RBF SVC on the digits' split, two ways.

On the 8x8 originals as scikit-learn ships them, and on the grey centre crops of the prepared JPEGs that the nets
see: how hard the images are, independent of the nets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class SvmFigures:
    name: str
    features: str
    top1_error: float
    fit_seconds: float
    predict_seconds: float


def svm_error(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray
) -> tuple[float, float, float]:
    """(top-1 error, fit seconds, predict seconds) of StandardScaler + RBF SVC with scikit-learn's defaults."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    classifier = make_pipeline(StandardScaler(), SVC(kernel="rbf"))
    began = time.perf_counter()
    classifier.fit(train_x, train_y)
    fitted = time.perf_counter()
    predicted = classifier.predict(val_x)
    done = time.perf_counter()
    return float(np.mean(predicted != val_y)), fitted - began, done - fitted


def svm_on_originals(val_fraction: float, split_seed: int) -> SvmFigures:
    """The 8x8 scans as scikit-learn ships them (64 ink values 0..16), on the split `alexserve digits` writes."""
    from alexserve.data.digits import load_digits_arrays, stratified_split

    images, labels = load_digits_arrays()
    is_val = stratified_split(labels, val_fraction, split_seed)
    pixels = images.reshape(len(images), -1)
    error, fit, predict = svm_error(pixels[~is_val], labels[~is_val], pixels[is_val], labels[is_val])
    return SvmFigures("SVM (RBF)", "8x8 originals", error, fit, predict)


def svm_on_prepared(prepared: Path, input_size: int) -> SvmFigures:
    """The images the nets see: the prepared JPEGs' grey centre crop of `input_size` pixels."""
    from PIL import Image

    from alexserve.data.prepared_tree import CLASSES_FILE, list_prepared_split, read_class_index

    classes = read_class_index(prepared / CLASSES_FILE)

    def load(split: str) -> tuple[np.ndarray, np.ndarray]:
        files = list_prepared_split(prepared / split, classes)
        crops = []
        for labelled in files:
            with Image.open(labelled.path) as img:
                side = img.size[0]
                left = (side - input_size) // 2
                crop = img.convert("L").crop((left, left, left + input_size, left + input_size))
                crops.append(np.asarray(crop, np.float32).ravel())
        return np.stack(crops), np.array([f.label for f in files])

    train_x, train_y = load("train")
    val_x, val_y = load("val")
    error, fit, predict = svm_error(train_x, train_y, val_x, val_y)
    return SvmFigures("SVM (RBF)", f"prepared {input_size}-px grey centre crops", error, fit, predict)
