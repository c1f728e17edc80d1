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
    schedule = PlateauSchedule(OptimConfig())  # lr 0.01, /10, patience 1, three reductions
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
    schedule = PlateauSchedule(OptimConfig(learning_rate=1.0, lr_divisor=2.0, plateau_patience=2, max_lr_reductions=5))
    # After the drop at epoch 4, 0.45 does not beat the best 0.4, so patience runs out again at epoch 6.
    lrs = [lr for lr, _ in _run(schedule, [0.5, 0.4, 0.41, 0.42, 0.45, 0.45, 0.3])]
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_zero_reductions_stops_at_the_first_plateau():
    schedule = PlateauSchedule(OptimConfig(max_lr_reductions=0))
    assert _run(schedule, [0.5, 0.4, 0.4]) == [(0.01, False), (0.01, False), (0.01, True)]


def test_nan_error_counts_as_no_improvement():
    schedule = PlateauSchedule(OptimConfig())
    schedule.step(0.5)
    assert schedule.step(math.nan) == pytest.approx(0.001)


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
