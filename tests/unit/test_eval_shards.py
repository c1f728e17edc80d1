"""Each data-parallel pair's evaluation source holds only its own batches, and together they hold every image once."""

from __future__ import annotations

import pytest
import torch

from alexserve.config import DataConfig, JobConfig, ModelConfig, TrainConfig
from alexserve.data.factory import build_eval_source
from alexserve.data.source import EmptyEvalSource, eval_shard_indices


@pytest.mark.parametrize(("num_images", "batch_size", "num_shards"), [(10, 3, 2), (359, 64, 2), (64, 64, 3), (7, 2, 4)])
def test_shards_are_whole_batches_of_the_unsharded_order_and_cover_every_image_once(num_images, batch_size, num_shards):
    unsharded = [list(range(s, min(s + batch_size, num_images))) for s in range(0, num_images, batch_size)]
    seen = []
    for shard in range(num_shards):
        indices = eval_shard_indices(num_images, batch_size, shard, num_shards)
        rebatched = [indices[s : s + batch_size] for s in range(0, len(indices), batch_size)]
        assert rebatched == unsharded[shard::num_shards], f"shard {shard} of {num_shards}"
        seen += indices
    assert sorted(seen) == list(range(num_images))


def test_a_generated_source_is_sharded_like_a_folder(tmp_path):
    job = JobConfig(
        model=ModelConfig(width=0.125, input_size=64),
        data=DataConfig(source="generated", generated_val_images=10),
        train=TrainConfig(batch_size=4, run_dir=tmp_path),
    )
    cpu = torch.device("cpu")
    whole = build_eval_source(job, device=cpu)
    shards = [build_eval_source(job, device=cpu, shard=s, num_shards=2) for s in range(2)]
    assert [s.num_images for s in shards] == [6, 4]  # batches 0 and 2 (4 + 2 images), batch 1 (4 images)
    whole_batches = [labels.tolist() for _, labels in whole.batches("center")]
    assert [labels.tolist() for _, labels in shards[0].batches("center")] == whole_batches[0::2]
    assert [labels.tolist() for _, labels in shards[1].batches("center")] == whole_batches[1::2]


def test_a_shard_without_a_batch_is_empty_but_still_a_source():
    assert eval_shard_indices(3, 4, 1, 2) == []
    assert list(EmptyEvalSource().batches("center")) == []
