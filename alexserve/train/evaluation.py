"""Top-1/top-5 error of the towers on an evaluation source, centre crop or ten crops."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alexserve.data.source import EvalMode, EvalSource
from alexserve.train.step import topk_errors


@dataclass
class EvalResult:
    mode: EvalMode
    top1_error: float
    top5_error: float
    images: int


@torch.no_grad()
def evaluate(logits_of, source: EvalSource, mode: EvalMode) -> EvalResult:
    """`logits_of(images [N,3,S,S]) -> logits [N, classes]` (towers or grouped model, in eval mode).

    Ten-crop averages the softmax over the ten patches, as the paper does.
    """
    top1 = top5 = seen = 0
    for images, labels in source.batches(mode):
        if mode == "ten_crop":
            batch, crops = images.shape[:2]
            probs = logits_of(images.flatten(0, 1)).softmax(dim=1).view(batch, crops, -1).mean(dim=1)
        else:
            probs = logits_of(images).softmax(dim=1)
        top1 += topk_errors(probs, labels, 1)
        top5 += topk_errors(probs, labels, 5)
        seen += len(labels)
    if seen == 0:
        raise ValueError("the evaluation source yielded no images")
    return EvalResult(mode, top1 / seen, top5 / seen, seen)
