import numpy as np
import pytest

from alexserve.data.augment import TrainPlan, draw_epoch, shard_steps, ten_crop_offsets
from alexserve.data.prepared_tree import DatasetError
from alexserve.data.stats import DatasetStats


def make_stats(scale: int = 256) -> DatasetStats:
    rng = np.random.default_rng(11)
    vectors, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    values = np.array([0.2, 0.02, 0.005])
    return DatasetStats(
        mean_image=np.zeros((scale, scale, 3), np.float32),
        rgb_covariance=vectors @ np.diag(values) @ vectors.T,
        rgb_eigenvalues=values,
        rgb_eigenvectors=vectors,
        num_images=1,
        scale_size=scale,
    )


def plan(num_images=1000, batch_size=16, dp_rank=0, dp_size=1, seed=0) -> TrainPlan:
    return TrainPlan(num_images, batch_size, seed, dp_rank, dp_size, 32, 0.5, 0.1, make_stats())


def test_lighting_offsets_have_the_papers_distribution():
    stats = make_stats()
    p = draw_epoch(200_000, seed=1, epoch=0, max_offset=32, flip_probability=0.5, pca_lighting_std=0.1, stats=stats)
    offsets = p.lighting.astype(np.float64) / 255.0  # back to the 0..1 units of the PCA
    P, lam = stats.rgb_eigenvectors, stats.rgb_eigenvalues
    expected = P @ np.diag(0.01 * lam**2) @ P.T
    assert np.abs(offsets.mean(0)).max() < 4 * np.sqrt(expected.diagonal().max() / len(offsets))
    np.testing.assert_allclose(np.cov(offsets, rowvar=False), expected, rtol=0.02, atol=1e-3 * expected.max())


def test_crops_cover_every_legal_offset_and_flips_are_half():
    p = draw_epoch(
        100_000, seed=2, epoch=3, max_offset=256 - 224, flip_probability=0.5, pca_lighting_std=0.1, stats=make_stats()
    )
    for axis in (p.crop_x, p.crop_y):
        assert set(np.unique(axis).tolist()) == set(range(33))
    assert abs(p.flip.mean() - 0.5) < 0.01
    assert sorted(p.file_indices.tolist()) == list(range(100_000))


def test_plan_is_a_pure_function_of_seed_epoch_position():
    a, b = plan().rank_params(4), plan().rank_params(4)
    for x, y in zip(vars(a).values(), vars(b).values()):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(plan().rank_params(5).file_indices, a.file_indices)
    assert not np.array_equal(plan(seed=1).rank_params(4).file_indices, a.file_indices)


def test_resume_is_the_tail_of_the_epoch():
    full, tail = plan().step_params(2, 0), plan().step_params(2, 5)
    assert len(tail) == len(full) - 5 == plan().steps_per_epoch - 5
    for x, y in zip(full[5:], tail):
        np.testing.assert_array_equal(x.file_indices, y.file_indices)
        np.testing.assert_array_equal(x.lighting, y.lighting)
    with pytest.raises(ValueError, match="start_step"):
        plan().step_params(0, plan().steps_per_epoch + 1)


def test_ranks_get_disjoint_shards_with_equal_steps():
    shards = [plan(num_images=1003, dp_rank=r, dp_size=3).rank_params(0) for r in range(3)]
    steps = {plan(num_images=1003, dp_rank=r, dp_size=3).steps_per_epoch for r in range(3)}
    assert steps == {1003 // 3 // 16}
    sets = [set(s.file_indices.tolist()) for s in shards]
    assert all(len(s) == 20 * 16 for s in sets)
    assert not (sets[0] & sets[1]) and not (sets[1] & sets[2]) and not (sets[0] & sets[2])


def test_too_few_images_names_the_problem():
    with pytest.raises(DatasetError, match="no full batch of 64"):
        shard_steps(100, 64, 1, 2)


def test_ten_crop_offsets():
    assert ten_crop_offsets(256, 224) == [
        (0, 0, False),
        (32, 0, False),
        (0, 32, False),
        (32, 32, False),
        (16, 16, False),
        (0, 0, True),
        (32, 0, True),
        (0, 32, True),
        (32, 32, True),
        (16, 16, True),
    ]
