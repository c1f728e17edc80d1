"""Top-1/top-5 error of the towers on an evaluation source, centre crop or ten crops.

With several data-parallel pairs each pair's source holds only its own shard (batch i goes to pair i mod
num_pairs, `data.source.eval_shard_indices`; both towers of a pair take the same batches, as their exchanges
need), so a pair reads, decodes and evaluates only its batches, and the error counts are summed over the pairs
(`sum_over_pairs`), so every rank gets the counts of the whole set. The counts stay on the device until that
sum; they are read back once per evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from alexserve.data.augment import tested_patches
from alexserve.data.source import EvalMode, EvalSource
from alexserve.parallel.exchange import peers_required
from alexserve.parallel.topology import Topology
from alexserve.train.step import topk_errors


@dataclass
class EvalResult:
    mode: EvalMode
    top1_error: float
    top5_error: float
    images: int


def _unchanged(counts: torch.Tensor) -> torch.Tensor:
    return counts


@torch.no_grad()
def evaluate(
    logits_of,
    source: EvalSource,
    mode: EvalMode,
    *,
    sum_counts: Callable[[torch.Tensor], torch.Tensor] = _unchanged,
    device: torch.device | None = None,
    mirrors: bool = True,
) -> EvalResult:
    """`logits_of(images [N,3,S,S]) -> logits [N, classes]` (towers or grouped model, in eval mode).

    Ten-crop averages the softmax over the ten patches, as the paper does; without `mirrors` (a net trained
    without flips, `DataConfig.test_time_mirrors`) over the five unmirrored ones. With several pairs `source` holds
    this pair's shard, and `sum_counts` sums [top-1 errors, top-5 errors, images] over the shards (collective
    when there are several: every shard calls it, even one that got no batch).
    """
    top1 = top5 = seen = 0
    for images, labels in source.batches(mode):
        if mode == "ten_crop":
            images = tested_patches(images, mirrors)
            batch, crops = images.shape[:2]
            probs = logits_of(images.flatten(0, 1)).float().softmax(dim=1).view(batch, crops, -1).mean(dim=1)
        else:
            probs = logits_of(images).float().softmax(dim=1)
        top1 = top1 + topk_errors(probs, labels, 1)
        top5 = top5 + topk_errors(probs, labels, 5)
        seen += len(labels)
        device = labels.device
    counts = torch.tensor([0, 0, seen], dtype=torch.int64, device=device)
    counts[0] += top1
    counts[1] += top5
    top1, top5, seen = sum_counts(counts).tolist()  # the one read-back of this evaluation
    if seen == 0:
        raise ValueError("the evaluation source yielded no images")
    return EvalResult(mode, top1 / seen, top5 / seen, seen)


def sum_over_pairs(counts: torch.Tensor, topology: Topology) -> torch.Tensor:
    """The counts of every pair added up (collective with several pairs; every rank gets the sum)."""
    if topology.num_pairs == 1:
        return counts
    # Both towers of a pair hold the same counts: tower 1 contributes zeros, so each pair is counted once.
    total = counts if topology.tower == 0 else torch.zeros_like(counts)
    with peers_required(topology.rank, "the sum of the evaluation's error counts"):
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total
