"""The random number generators' states, saved with each tower's shard so a resumed run draws what the
uninterrupted one would have: Python's, NumPy's, torch's CPU generator and every visible CUDA device's."""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states this process draws from, as tensors and numbers (weights_only-loadable).

    Covers torch CPU, every visible CUDA device, numpy's global (legacy)
    generator and Python's `random`. Generators the code owns (a
    `numpy.random.Generator`, a `torch.Generator`) are not global: their owner
    must save them.
    """
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch_cpu": torch.get_rng_state(),
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),  # uint32 values fit int64 exactly
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {
            "version": py_version,
            "internal": torch.tensor(py_internal, dtype=torch.int64),  # 624 words < 2**32 and the index
            "gauss_next": py_gauss,
        },
        "torch_cuda": [],
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Puts back what `capture_rng_state` returned, so the next draws repeat those that followed the capture."""
    torch.set_rng_state(state["torch_cpu"].to("cpu", torch.uint8))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].cpu().numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(int(x) for x in py_state["internal"].tolist()), py_state["gauss_next"]))
    _restore_cuda(state.get("torch_cuda", []))


def _restore_cuda(saved: list[torch.Tensor]) -> None:
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(saved) != available:
        # Resuming on another machine: whatever matches is restored, and exact
        # reproduction of GPU dropout masks is not to be expected.
        warnings.warn(
            f"checkpoint holds CUDA RNG states for {len(saved)} device(s), this process sees {available}", stacklevel=2
        )
    for device, rng in enumerate(saved[:available]):
        torch.cuda.set_rng_state(rng.to("cpu", torch.uint8), device)
