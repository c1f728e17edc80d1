"""What a checkpoint may hold: exactly what `torch.load(weights_only=True)` reads back, checked when saving.

A payload another type slipped into (a numpy array, a dataclass, a Path) would save fine and then refuse to load
when resuming after a crash; `check_loadable` names the key at save time instead. Loading is always
weights_only: a checkpoint never runs code.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alexserve.checkpoint.files import CheckpointError, write_file_atomically

# Exactly the types `torch.load(weights_only=True)` reads back (checked by the tests).
_LEAF_TYPES = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device, torch.Size)
_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def check_loadable(payload: Any, where: str = "payload") -> None:
    """Raises CheckpointError naming the first value that weights_only loading could not read back."""
    kind = type(payload)
    if kind in _TENSOR_TYPES or kind in _LEAF_TYPES:
        return
    if kind in (dict, OrderedDict):
        for key, value in payload.items():
            if type(key) not in (str, int, float, bool, tuple, type(None)):
                raise CheckpointError(f"{where} has a key of type {type(key).__name__}; use str or int keys")
            check_loadable(value, f"{where}[{key!r}]")
        return
    if kind in (list, tuple, set):
        for index, value in enumerate(payload):
            check_loadable(value, f"{where}[{index}]")
        return
    hint = (
        "convert it with torch.as_tensor(...)"
        if isinstance(payload, np.ndarray)
        else (
            "convert it with float()/int()"
            if isinstance(payload, np.generic)
            else "store plain numbers, strings, tensors or containers of them"
        )
    )
    raise CheckpointError(
        f"{where} is a {kind.__module__}.{kind.__qualname__}, which torch.load(weights_only=True) refuses; {hint}"
    )


def save_torch(path: Path, payload: dict[str, Any]) -> tuple[int, str]:
    return write_file_atomically(path, lambda f: torch.save(payload, f))


def torch_load(path: Path, data: bytes, map_location: Any) -> Any:
    """`torch.load(weights_only=True)`, with its failures turned into errors that name the file."""
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = _weights_only_reason(str(err))
        raise CheckpointError(
            f"{path}: refused: loading it would need objects that weights_only loading does not allow ({detail}); "
            "a checkpoint must never run code"
        ) from None
    except Exception as err:  # the zip reader raises RuntimeError, pickle may raise EOFError, ValueError...
        raise CheckpointError(f"{path}: not a readable torch file: {type(err).__name__}: {err}") from None


def _weights_only_reason(message: str) -> str:
    """The line of torch's refusal that says what was refused (e.g. "unsupported GLOBAL posix.system")."""
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    specific = [line for line in lines if not line.startswith(boilerplate)]
    return " ".join(specific) if specific else (lines[0] if lines else "no reason given")
