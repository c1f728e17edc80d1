"""The plateau schedule divides the learning rate at the right epochs and stops after the last reduction."""

from __future__ import annotations

import io
import math

import pytest
import torch

from alexserve.config import OptimConfig
from alexserve.train.schedule import PlateauSchedule


def _run(schedule: PlateauSchedule, errors: list[float]) -> list[tuple[float, bool]]:
    return [(schedule.step(e), schedule.should_stop) for e in errors]


def test_paper_defaults_divide_by_ten_on_each_plateau_then_stop():
    # lr 0.01, /10, three reductions; the strictest reading of "stopped improving" (patience 1, any improvement counts)
    schedule = PlateauSchedule(OptimConfig(plateau_patience=1, plateau_min_relative_improvement=0.0))
    errors = [0.9, 0.8, 0.8, 0.7, 0.75, 0.6, 0.6, 0.5, 0.5]
    got = _run(schedule, errors)
    expected = [
        (0.01, False),  # epoch 1: first error is an improvement
        (0.01, False),  # 2: improves
        (0.001, False),  # 3: equal is not better -> first reduction
        (0.001, False),  # 4: improves
        (0.0001, False),  # 5: worse -> second reduction
        (0.0001, False),  # 6: improves
        (0.00001, False),  # 7: plateau -> third reduction
        (0.00001, False),  # 8: improves
        (0.00001, True),  # 9: plateau with the budget spent -> stop, lr unchanged
    ]
    assert [s for _, s in got] == [s for _, s in expected]
    for (lr, _), (want, _) in zip(got, expected):
        assert lr == pytest.approx(want, rel=1e-12)
    assert schedule.num_reductions == 3


def test_patience_counts_epochs_without_improvement_and_best_survives_reductions():
    schedule = PlateauSchedule(
        OptimConfig(
            learning_rate=1.0,
            lr_divisor=2.0,
            plateau_patience=2,
            max_lr_reductions=5,
            plateau_min_relative_improvement=0.0,
        )
    )
    # After the drop at epoch 4, 0.45 does not beat the best 0.4, so patience runs out again at epoch 6.
    lrs = [lr for lr, _ in _run(schedule, [0.5, 0.4, 0.41, 0.42, 0.45, 0.45, 0.3])]
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_zero_reductions_stops_at_the_first_plateau():
    schedule = PlateauSchedule(OptimConfig(max_lr_reductions=0, plateau_patience=1))
    assert _run(schedule, [0.5, 0.4, 0.4]) == [(0.01, False), (0.01, False), (0.01, True)]


def noisy_errors(trend: list[float], noise: float, seed: int) -> list[float]:
    """A validation curve as a finite set measures it: the trend plus noise of a few images either way."""
    rng = torch.Generator().manual_seed(seed)
    return [max(0.0, t + noise * float(torch.randn((), generator=rng))) for t in trend]


def test_default_schedule_does_not_drop_on_noise_while_the_error_still_falls():
    """Falling 8% a epoch under noise of about 3% (a few images of 360): no reduction, on any of 20 noise draws."""
    trend = [0.5 * 0.92**epoch for epoch in range(20)]
    for seed in range(20):
        errors = noisy_errors([t for t in trend], noise=0.03 * 0.5 * 0.92**10, seed=seed)
        schedule = PlateauSchedule(OptimConfig())
        lrs = [lr for lr, _ in _run(schedule, errors)]
        assert lrs == [0.01] * 20, (seed, errors, lrs)


def test_default_schedule_drops_within_patience_once_the_error_is_flat_and_noisy():
    """A flat curve with noise: the rate is divided three times and training stops, a patience apart at the least."""
    for seed in range(20):
        errors = noisy_errors([0.2] * 40, noise=0.004, seed=seed)
        schedule = PlateauSchedule(OptimConfig())
        got = _run(schedule, errors)
        drops = [epoch for epoch in range(1, 40) if got[epoch][0] < got[epoch - 1][0]]
        assert len(drops) == 3, (seed, got)
        assert all(b - a >= 3 for a, b in zip([-1, *drops], drops)), drops
        assert any(stopped for _, stopped in got)


def test_one_noisy_epoch_does_not_cost_a_reduction():
    """The strict rule (patience 1) divides the rate after one bad epoch; the default waits for a real plateau."""
    errors = [0.50, 0.40, 0.42, 0.33, 0.30, 0.31, 0.25]
    strict = PlateauSchedule(OptimConfig(plateau_patience=1, plateau_min_relative_improvement=0.0))
    assert [lr for lr, _ in _run(strict, errors)][2] == pytest.approx(0.001)
    assert [lr for lr, _ in _run(PlateauSchedule(OptimConfig()), errors)] == [0.01] * 7


def test_an_improvement_by_a_hair_does_not_reset_the_patience():
    """0.2000 -> 0.1995 -> 0.1990 is 'better' each time but less than 2% better: the plateau is still seen."""
    schedule = PlateauSchedule(OptimConfig())
    lrs = [lr for lr, _ in _run(schedule, [0.2, 0.1995, 0.1990, 0.1985])]
    assert lrs == [0.01, 0.01, 0.01, pytest.approx(0.001)]
    assert schedule.best_error == pytest.approx(0.1985)


def test_warmup_ramps_linearly_then_holds():
    from alexserve.train.schedule import warmup_factor

    assert [warmup_factor(step, 4) for step in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def test_nan_error_counts_as_no_improvement():
    schedule = PlateauSchedule(OptimConfig())
    schedule.step(0.5)
    assert [schedule.step(math.nan) for _ in range(3)] == [0.01, 0.01, pytest.approx(0.001)]
    assert schedule.best_error == 0.5


def test_state_round_trips_through_weights_only_load_and_continues_identically():
    cfg = OptimConfig(plateau_patience=2)
    errors = [0.9, 0.8, 0.85, 0.86, 0.7, 0.71, 0.72, 0.73, 0.74, 0.75, 0.76, 0.77]
    straight = PlateauSchedule(cfg)
    expected = _run(straight, errors)

    first = PlateauSchedule(cfg)
    head = _run(first, errors[:5])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = PlateauSchedule(cfg)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert head + _run(resumed, errors[5:]) == expected
    assert resumed.state_dict() == straight.state_dict()


def test_fresh_state_has_infinite_best_and_load_rejects_incomplete_state():
    schedule = PlateauSchedule(OptimConfig())
    assert schedule.state_dict()["best_error"] == math.inf
    state = schedule.state_dict()
    del state["num_reductions"]
    with pytest.raises(ValueError, match="num_reductions"):
        PlateauSchedule(OptimConfig()).load_state_dict(state)


def test_a_run_too_short_for_its_plateaus_ends_at_a_reduced_rate():
    """Steady improvement never plateaus. With 12 epochs the rate drops once three epochs are left, and not again:
    the reduced rate has not yet run a patience (3 epochs) when the later reductions would be due."""
    errors = [0.5 * 0.9**epoch for epoch in range(12)]
    budgeted = _run(PlateauSchedule(OptimConfig(), epoch_budget=12), errors)
    assert [lr for lr, _ in budgeted] == pytest.approx([0.01] * 8 + [1e-3] * 4)
    assert not any(stop for _, stop in budgeted)
    assert [lr for lr, _ in _run(PlateauSchedule(OptimConfig()), errors)] == [0.01] * 12  # the paper's rule alone


def test_the_budget_never_drops_sooner_than_a_plateau_could():
    """A 4-epoch run (the demo) keeps its first rate for a patience of 3 epochs, then ends one epoch lower;
    with patience 1 the three reductions fill the last three epochs."""
    errors = [0.5 * 0.9**epoch for epoch in range(4)]
    assert [lr for lr, _ in _run(PlateauSchedule(OptimConfig(), epoch_budget=4), errors)] == pytest.approx(
        [0.01, 0.01, 1e-3, 1e-3]
    )
    eager = PlateauSchedule(OptimConfig(plateau_patience=1), epoch_budget=4)
    assert [lr for lr, _ in _run(eager, errors)] == pytest.approx([1e-3, 1e-4, 1e-5, 1e-5])


def test_a_state_saved_before_epochs_at_rate_existed_still_loads():
    first = PlateauSchedule(OptimConfig(), epoch_budget=12)
    _run(first, [0.5, 0.4, 0.3])
    old = {key: value for key, value in first.state_dict().items() if key != "epochs_at_rate"}
    resumed = PlateauSchedule(OptimConfig(), epoch_budget=12)
    resumed.load_state_dict(old)
    assert resumed.epochs_at_rate == 3


def test_the_budget_adds_nothing_when_the_plateaus_came_in_time():
    errors = [0.5, 0.4] + [0.4] * 12
    cfg = OptimConfig(plateau_patience=1, plateau_min_relative_improvement=0.0)
    assert _run(PlateauSchedule(cfg, epoch_budget=14), errors) == _run(PlateauSchedule(cfg), errors)


def test_a_plateau_in_the_last_epochs_is_not_counted_twice():
    """Epoch 9 plateaus (patience 1) just as the budget demands a drop: one division, not two."""
    errors = [0.5 * 0.9**epoch for epoch in range(8)] + [1.0, 0.01, 0.005, 0.001]
    cfg = OptimConfig(plateau_patience=1, plateau_min_relative_improvement=0.0)
    lrs = [lr for lr, _ in _run(PlateauSchedule(cfg, epoch_budget=12), errors)]
    assert lrs == pytest.approx([0.01] * 8 + [1e-3, 1e-4, 1e-5, 1e-5])
