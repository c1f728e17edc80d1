"""The training-set statistics the paper needs: the mean image and the PCA of RGB pixel values.

Stored by `alexserve prepare` as `DST/stats.npz` with these arrays:

    mean_image        float32 [S, S, 3]  mean over prepared training images, RGB, raw 0..255 units (S = scale_size)
    rgb_covariance    float64 [3, 3]     covariance of every training pixel's RGB value, pixel values scaled to 0..1
    rgb_eigenvalues   float64 [3]        eigenvalues of rgb_covariance, largest first (the paper's lambda_i)
    rgb_eigenvectors  float64 [3, 3]     column i is the unit eigenvector p_i (sign: largest |component| positive)
    num_images        int64              training images the statistics cover
    scale_size        int64              side of every prepared image

Units: the network sees centred raw RGB (0..255, as in the paper), but the PCA is
taken on 0..1 values, because that is the scale at which the paper's alpha ~ N(0, 0.1)
gives a lighting shift of a few intensity levels (the 0..255 eigenvalues are 255^2
larger and would swamp the image). The offset added to a 0..255 pixel is therefore
255 * P @ (alpha * lambda); see `lighting_offsets`.

`DatasetStats.load` trusts nothing in the file: members larger than the largest
scale allows are refused before they are read, and every array must have its
shape and hold finite values (a DatasetError naming the file otherwise).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alexserve.config import MAX_INPUT_SIZE
from alexserve.data.prepared_tree import DatasetError
from alexserve.durable import write_atomically

PIXEL_SCALE = 255.0
# The largest scale_size a config accepts (DataConfig.scale_size); a mean image larger than this is damage.
MAX_SCALE_SIZE = 2 * MAX_INPUT_SIZE
# No member of a stats file is bigger than a float64 mean image at that scale, plus the .npy header.
_MAX_MEMBER_BYTES = MAX_SCALE_SIZE * MAX_SCALE_SIZE * 3 * 8 + 4096


@dataclass(frozen=True)
class DatasetStats:
    mean_image: np.ndarray
    rgb_covariance: np.ndarray
    rgb_eigenvalues: np.ndarray
    rgb_eigenvectors: np.ndarray
    num_images: int
    scale_size: int

    def centred_pixel_std(self) -> float:
        """Std (0..255 units, over channels and positions) of training pixels minus the mean image: what conv1 sees.

        From the stored moments: E[x_c^2] = cov_cc + m_c^2 (m: the mean pixel), and the
        mean image takes away its own energy, E over positions of mean_image_c^2.
        """
        mean_pixel = self.mean_image.reshape(-1, 3).astype(np.float64).mean(axis=0)
        second_moment = np.diag(self.rgb_covariance) * PIXEL_SCALE**2 + mean_pixel**2
        mean_image_energy = (self.mean_image.reshape(-1, 3).astype(np.float64) ** 2).mean(axis=0)
        return float(np.sqrt(max(float((second_moment - mean_image_energy).mean()), 0.0)))

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        np.savez(
            buf,
            mean_image=self.mean_image.astype(np.float32),
            rgb_covariance=self.rgb_covariance,
            rgb_eigenvalues=self.rgb_eigenvalues,
            rgb_eigenvectors=self.rgb_eigenvectors,
            num_images=np.int64(self.num_images),
            scale_size=np.int64(self.scale_size),
        )
        write_atomically(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> DatasetStats:
        if not Path(path).is_file():
            raise DatasetError(
                f"{path}: stats file (mean image and RGB PCA) not found; run `alexserve prepare SRC DST` "
                "and use DST/train as data.train_dir (or set data.stats_path)"
            )
        _check_member_sizes(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                stats = cls(
                    mean_image=z["mean_image"].astype(np.float32),
                    rgb_covariance=z["rgb_covariance"],
                    rgb_eigenvalues=z["rgb_eigenvalues"],
                    rgb_eigenvectors=z["rgb_eigenvectors"],
                    num_images=int(z["num_images"]),
                    scale_size=int(z["scale_size"]),
                )
        except (OSError, KeyError, ValueError) as err:
            raise DatasetError(f"{path}: not a stats file written by `alexserve prepare`: {err}") from None
        s = stats.scale_size
        if not 1 <= s <= MAX_SCALE_SIZE:
            raise DatasetError(f"{path}: scale_size {s} is outside 1..{MAX_SCALE_SIZE}")
        if stats.num_images < 1:
            raise DatasetError(f"{path}: num_images is {stats.num_images}, expected at least 1")
        shapes = {
            "mean_image": (stats.mean_image, (s, s, 3)),
            "rgb_covariance": (stats.rgb_covariance, (3, 3)),
            "rgb_eigenvalues": (stats.rgb_eigenvalues, (3,)),
            "rgb_eigenvectors": (stats.rgb_eigenvectors, (3, 3)),
        }
        for name, (array, shape) in shapes.items():
            if array.shape != shape:
                raise DatasetError(f"{path}: {name} has shape {array.shape}, expected {shape}")
            if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
                raise DatasetError(f"{path}: {name} holds values that are not finite numbers (NaN or infinity)")
        return stats

    def lighting_offsets(self, alpha: np.ndarray) -> np.ndarray:
        """[N, 3] alphas -> [N, 3] RGB offsets in 0..255 units: 255 * P @ (alpha * lambda), one row per image."""
        return (PIXEL_SCALE * (alpha * self.rgb_eigenvalues) @ self.rgb_eigenvectors.T).astype(np.float32)


def _check_member_sizes(path: Path) -> None:
    """Refuses a stats file with a member bigger than any real stats file holds, before anything is decompressed."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.file_size > _MAX_MEMBER_BYTES:
                    raise DatasetError(
                        f"{path}: member {info.filename} is {info.file_size} bytes, more than a stats file holds "
                        f"(at most {_MAX_MEMBER_BYTES})"
                    )
    except (zipfile.BadZipFile, OSError) as err:
        raise DatasetError(f"{path}: not a stats file written by `alexserve prepare`: {err}") from None


class StatsAccumulator:
    """Sums that give the mean image and pixel covariance; partial sums from workers add up exactly."""

    def __init__(self, size: int):
        self.image_sum = np.zeros((size, size, 3), np.float64)
        self.pixel_sum = np.zeros(3, np.float64)
        self.pixel_outer = np.zeros((3, 3), np.float64)
        self.num_images = 0
        self.num_pixels = 0

    def add(self, image: np.ndarray) -> None:
        """One HxWx3 uint8 RGB image."""
        self.image_sum += image
        px = image.reshape(-1, 3).astype(np.float64) / PIXEL_SCALE
        self.pixel_sum += px.sum(0)
        self.pixel_outer += px.T @ px
        self.num_images += 1
        self.num_pixels += px.shape[0]

    def merge(self, other: StatsAccumulator) -> None:
        self.image_sum += other.image_sum
        self.pixel_sum += other.pixel_sum
        self.pixel_outer += other.pixel_outer
        self.num_images += other.num_images
        self.num_pixels += other.num_pixels

    def finish(self) -> DatasetStats:
        if self.num_images == 0:
            raise DatasetError("no training images were prepared, so there is no mean image or PCA to compute")
        mean_px = self.pixel_sum / self.num_pixels
        cov = self.pixel_outer / self.num_pixels - np.outer(mean_px, mean_px)
        cov = (cov + cov.T) / 2
        values, vectors = np.linalg.eigh(cov)
        order = np.argsort(values)[::-1]
        values, vectors = np.clip(values[order], 0.0, None), vectors[:, order]
        # eigh's signs are arbitrary; fix them so the file is reproducible across machines.
        signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(3)])
        vectors = vectors * np.where(signs == 0, 1.0, signs)
        return DatasetStats(
            mean_image=(self.image_sum / self.num_images).astype(np.float32),
            rgb_covariance=cov,
            rgb_eigenvalues=values,
            rgb_eigenvectors=vectors,
            num_images=self.num_images,
            scale_size=self.image_sum.shape[0],
        )
