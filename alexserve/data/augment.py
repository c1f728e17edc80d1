"""Every random choice of a training epoch, drawn up front as a pure function of (seed, epoch, position).

The epoch's order is a permutation of the training files seeded by (seed, epoch);
the crop offsets, the flip and the PCA-lighting alphas are drawn from the same
generator for every *position* of that permutation. A data-parallel rank owns a
contiguous block of positions and a batch is a run of positions, so:

- both towers of a pair (same seed, same rank) compute the same plan: identical batches;
- ranks read disjoint blocks (drop-last per block: every rank runs the same number of steps);
- `batches(epoch, k)` slices the same arrays from step k: resume is exact;
- the DALI and the PIL loader apply the same parameters: their pixels can be compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alexserve.data.prepared_tree import DatasetError
from alexserve.data.stats import DatasetStats

# Separates these streams from any other use of the job seed (weights, dropout).
_DATA_STREAM = 0x414C4558


@dataclass(frozen=True)
class SampleParams:
    """Per-sample augmentation for a run of positions (all arrays have the same length)."""

    file_indices: np.ndarray  # int64: index into the sorted file list
    crop_x: np.ndarray  # int64: left edge of the crop, 0..scale-S
    crop_y: np.ndarray  # int64: top edge of the crop, 0..scale-S
    flip: np.ndarray  # bool: horizontal reflection
    lighting: np.ndarray  # float32 [n, 3]: RGB offset added to every pixel (0..255 units)

    def __len__(self) -> int:
        return len(self.file_indices)

    def slice(self, start: int, stop: int) -> SampleParams:
        return SampleParams(
            *(a[start:stop] for a in (self.file_indices, self.crop_x, self.crop_y, self.flip, self.lighting))
        )


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed % 2**63, epoch, _DATA_STREAM])


def draw_epoch(
    num_images: int,
    *,
    seed: int,
    epoch: int,
    max_offset: int,
    flip_probability: float,
    pca_lighting_std: float,
    stats: DatasetStats,
) -> SampleParams:
    """Parameters for every position of the epoch's permutation (before sharding)."""
    rng = epoch_rng(seed, epoch)
    order = rng.permutation(num_images)
    crop_x = rng.integers(0, max_offset + 1, num_images)
    crop_y = rng.integers(0, max_offset + 1, num_images)
    flip = rng.random(num_images) < flip_probability
    alpha = rng.normal(0.0, pca_lighting_std, (num_images, 3))
    return SampleParams(order, crop_x, crop_y, flip, stats.lighting_offsets(alpha))


def shard_steps(num_images: int, batch_size: int, dp_rank: int, dp_size: int) -> tuple[int, int]:
    """(first position of this rank's block, full batches in it)."""
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank {dp_rank} is outside 0..{dp_size - 1}")
    per_rank = num_images // dp_size
    steps = per_rank // batch_size
    if steps == 0:
        raise DatasetError(
            f"{num_images} training images split over {dp_size} data-parallel rank(s) give no full batch of "
            f"{batch_size}; "
            "use a smaller train.batch_size or more images"
        )
    return dp_rank * per_rank, steps


@dataclass(frozen=True)
class TrainPlan:
    """Who reads what: the arguments every train source shares."""

    num_images: int
    batch_size: int
    seed: int
    dp_rank: int
    dp_size: int
    max_offset: int
    flip_probability: float
    pca_lighting_std: float
    stats: DatasetStats

    @property
    def steps_per_epoch(self) -> int:
        return shard_steps(self.num_images, self.batch_size, self.dp_rank, self.dp_size)[1]

    def rank_params(self, epoch: int) -> SampleParams:
        """This rank's positions of `epoch`, steps_per_epoch * batch_size of them."""
        first, steps = shard_steps(self.num_images, self.batch_size, self.dp_rank, self.dp_size)
        params = draw_epoch(
            self.num_images,
            seed=self.seed,
            epoch=epoch,
            max_offset=self.max_offset,
            flip_probability=self.flip_probability,
            pca_lighting_std=self.pca_lighting_std,
            stats=self.stats,
        )
        return params.slice(first, first + steps * self.batch_size)

    def step_params(self, epoch: int, start_step: int) -> list[SampleParams]:
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} is outside 0..{self.steps_per_epoch}")
        params, b = self.rank_params(epoch), self.batch_size
        return [params.slice(k * b, (k + 1) * b) for k in range(start_step, self.steps_per_epoch)]


# Of the ten test-time patches, the first five are the unreflected ones (ten_crop_offsets' order).
UNMIRRORED_CROPS = 5


def ten_crop_offsets(scale: int, size: int) -> list[tuple[int, int, bool]]:
    """(x, y, flip) of the paper's test-time patches: 4 corners and the centre, then the same 5 reflected."""
    far, mid = scale - size, (scale - size) // 2
    five = [(0, 0), (far, 0), (0, far), (far, far), (mid, mid)]
    return [(x, y, False) for x, y in five] + [(x, y, True) for x, y in five]


def tested_patches(ten_crops, mirrors: bool):
    """[B, 10, ...] ten-crop patches -> those a net is tested on: all ten, or without `mirrors` (a net that
    trained without flips) the five unreflected ones."""
    return ten_crops if mirrors else ten_crops[:, :UNMIRRORED_CROPS]


def center_offset(scale: int, size: int) -> int:
    return (scale - size) // 2
