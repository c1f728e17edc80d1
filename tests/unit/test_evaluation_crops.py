"""The ten-crop test averages the mirrored patches only for a net that trained on mirrors."""

from __future__ import annotations

import torch

from alexserve.data.source import EvalSource
from alexserve.train.evaluation import evaluate


class _TenCrops(EvalSource):
    """One batch of two images whose first five crops say class 0 and whose mirrored five say class 1, twice as sure."""

    steps_per_epoch = 1

    def batches(self, mode):
        images = torch.zeros(2, 10, 1, 1, 1)
        images[:, 5:] = 1.0
        yield images, torch.zeros(2, dtype=torch.int64)

    def close(self):
        pass


def _logits(images: torch.Tensor) -> torch.Tensor:
    mirrored = images.flatten(1)[:, 0] > 0.5
    return torch.stack([torch.where(mirrored, 0.0, 1.0), torch.where(mirrored, 3.0, 0.0)], dim=1)


def test_without_mirrors_only_the_five_unmirrored_crops_vote():
    assert evaluate(_logits, _TenCrops(), "ten_crop").top1_error == 1.0
    assert evaluate(_logits, _TenCrops(), "ten_crop", mirrors=False).top1_error == 0.0


def test_an_export_says_whether_its_model_is_tested_on_mirrors():
    from alexserve.inference.saved_model import exported_test_time_mirrors

    assert exported_test_time_mirrors({"test_time_mirrors": False}) is False
    assert exported_test_time_mirrors({"test_time_mirrors": True}) is True
    assert exported_test_time_mirrors({}) is True  # exported before the field: it trained on the paper's flips
