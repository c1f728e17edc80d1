"""Issue 24, item 5: the DALI pipeline asks for the dynamic executor explicitly, and the dependency floor is the
release where it became stable (DALI 1.44.0 release notes: "The dynamic executor (exec_dynamic) is no longer
experimental")."""

from __future__ import annotations

import re

import pytest
import tomllib
import torch

from alexserve.data.dali_loader import _pipeline_kwargs
from helpers.processes import REPO

DYNAMIC_EXECUTOR_STABLE = (1, 44)


def test_the_pipeline_asks_for_the_dynamic_executor():
    kwargs = _pipeline_kwargs(8, 2, torch.device("cpu"), seed=1)
    assert kwargs["exec_dynamic"] is True and kwargs["device_id"] is None


def test_the_dali_floor_is_where_the_dynamic_executor_is_stable():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dali"]
    (floor,) = [re.search(r">=\s*(\d+)\.(\d+)", spec) for spec in extras if spec.startswith("nvidia-dali")]
    assert floor and (int(floor[1]), int(floor[2])) >= DYNAMIC_EXECUTOR_STABLE, extras


def test_the_installed_dali_builds_a_pipeline_with_those_arguments():
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(**_pipeline_kwargs(2, 1, torch.device("cpu"), seed=1))
    def tiny():
        return fn.random.uniform(range=(0.0, 1.0), shape=(2,))

    pipe = tiny()
    pipe.build()
    (out,) = pipe.run()
    assert len(out) == 2
