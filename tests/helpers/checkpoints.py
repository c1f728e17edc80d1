"""Two-tower checkpoints whose every value encodes (step, tower), for the checkpoint store's tests.

A mixed-up or torn checkpoint cannot pass for a good one: `assert_is_step` checks each file against its step.
"""

from __future__ import annotations

import torch

from alexserve.checkpoint.rng_state import capture_rng_state
from alexserve.checkpoint.store import CheckpointRef, CheckpointStore
from alexserve.config import JobConfig, ModelConfig
from helpers.tensors import context

TOWERS = ("tower0", "tower1")


def tower_payload(step: int, tower: int, numel: int = 1000) -> dict:
    """A shard whose every value encodes (step, tower)."""
    value = float(step * 10 + tower)
    return {
        "model": {"conv1.weight": torch.full((numel,), value), "conv1.bias": torch.full((4,), value)},
        "optim": {
            "state": {0: {"momentum_buffer": torch.full((numel,), -value)}},
            "param_groups": [{"lr": 0.01, "params": [0]}],
        },
        "rng": capture_rng_state(),
    }


def job_config() -> dict:
    return JobConfig(model=ModelConfig(num_classes=10, width=0.25, input_size=64)).model_dump(mode="json")


def shared_payload(step: int) -> dict:
    return {
        "schedule": {"lr": 0.01, "best_error": float("inf")},
        "data": {"epoch": step // 4, "step_in_epoch": step % 4, "global_step": step},
    }


def write_checkpoint(store: CheckpointStore, step: int, numel: int = 1000) -> CheckpointRef:
    for tower, name in enumerate(store.shard_names):
        store.write_shard(step, name, tower_payload(step, tower, numel))
    return store.commit(step, shared_payload(step), job_config())


def assert_filled_with(tensor: torch.Tensor, value: float, what: str) -> None:
    torch.testing.assert_close(
        tensor, torch.full_like(tensor, value), rtol=0, atol=0, msg=context(f"{what} is not all {value}")
    )


def assert_is_step(store: CheckpointStore, ref: CheckpointRef, step: int) -> None:
    """Every file of `ref` loads and belongs to `step`."""
    assert ref.step == step
    for tower, name in enumerate(TOWERS):
        payload = store.load(ref, name)
        assert_filled_with(payload["model"]["conv1.weight"], step * 10 + tower, f"step {step} {name} conv1.weight")
        assert_filled_with(
            payload["optim"]["state"][0]["momentum_buffer"], -(step * 10 + tower), f"step {step} {name} momentum buffer"
        )
    assert store.load_shared(ref)["data"]["global_step"] == step
    assert store.load_config(ref) == job_config()


def latest(store: CheckpointStore) -> CheckpointRef:
    ref = store.latest()
    assert ref is not None
    return ref
