"""A saved model -> `AlexNetGrouped` in eval mode: an exported file or a checkpoint, whichever `path` is."""

from __future__ import annotations

from pathlib import Path

import torch

from alexserve.checkpoint.export import load_grouped_state
from alexserve.checkpoint.store import CheckpointError
from alexserve.model import AlexNetGrouped
from alexserve.model.exported import load_exported


def load_model(path: Path, device: torch.device) -> AlexNetGrouped:
    """`path` is a file written by `alexserve export`, a checkpoint folder, or a directory of checkpoints
    (its newest complete one). Raises `ExportError` or `CheckpointError` naming the path.

    An export is checked against its SHA-256 and every other check of `load_exported`.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        model, _ = load_exported(path, map_location=device)
        return model.to(device)
    job, state_dict, _ = load_grouped_state(path)
    model = AlexNetGrouped(job.model)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: the checkpoint does not fit its own config: {str(err).splitlines()[0]}"
        ) from None
    return model.to(device).eval()
