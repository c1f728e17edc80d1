"""The contract between the training loop and every data source.

A training source yields, for one epoch, batches of `(images, labels)`:
images a float tensor [B, 3, S, S] (mean-subtracted, augmented, on the tower's
device, in the configured dtype), labels an int64 tensor [B] on the same device.
Both towers of a pair build the same source with the same seed and data-parallel
rank, so they see identical batches; different pairs read disjoint shards.

Position is (epoch, step): `batches(epoch, start_step)` starts mid-epoch with
exactly the batches the uninterrupted run would have produced there, which is
what makes resume exact.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Literal

import torch

EvalMode = Literal["center", "ten_crop"]


class TrainSource(ABC):
    steps_per_epoch: int
    #: Seconds the consumer spent blocked waiting for a batch, summed since creation.
    wait_seconds_total: float = 0.0

    @abstractmethod
    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches `start_step .. steps_per_epoch-1` of `epoch`; drop-last, so every batch is full."""

    def close(self) -> None:
        """Release threads, pipelines and files."""


def eval_shard_indices(num_images: int, batch_size: int, shard: int, num_shards: int) -> list[int]:
    """The images of evaluation shard `shard`: whole batches i with i % num_shards == shard, in order.

    Batch i of the whole set is images [i*B, (i+1)*B); the shard's images, batched by B again, are exactly
    those batches (only the set's last batch may be short, and it stays last). So a pair reads and decodes
    only its own batches, and the batches are the ones an unsharded evaluation would make.
    """
    return [i for i in range(num_images) if (i // batch_size) % num_shards == shard]


class EvalSource(ABC):
    num_images: int

    @abstractmethod
    def batches(self, mode: EvalMode) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """'center': images [B, 3, S, S]; 'ten_crop': images [B, 10, 3, S, S] (4 corners + centre, then their
        reflections). Every image exactly once; the last batch may be short."""

    def close(self) -> None:
        """Release threads, pipelines and files."""


class EmptyEvalSource(EvalSource):
    """A shard that got no batch (more pairs than validation batches): it still takes part in the count's sum."""

    num_images = 0

    def batches(self, mode: EvalMode) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(())
