"""A saved model -> `AlexNetGrouped` in eval mode: an exported file or a checkpoint, whichever `path` is."""

from __future__ import annotations

from pathlib import Path

import torch

from alexserve.checkpoint.export import load_grouped_state
from alexserve.checkpoint.store import CheckpointError
from alexserve.model import AlexNetGrouped
from alexserve.model.exported import load_exported


def load_model(path: Path, device: torch.device) -> tuple[AlexNetGrouped, bool]:
    """(the model, whether its ten-crop test takes mirrored patches: only if it trained on mirrors).

    `path` is a file written by `alexserve export`, a checkpoint folder, or a directory of checkpoints
    (its newest complete one). Raises `ExportError` or `CheckpointError` naming the path.
    An export is checked against its SHA-256 and every other check of `load_exported`.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        model, meta = load_exported(path, map_location=device)
        return model.to(device), exported_test_time_mirrors(meta)
    job, state_dict, _ = load_grouped_state(path)
    model = AlexNetGrouped(job.model)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: the checkpoint does not fit its own config: {str(err).splitlines()[0]}"
        ) from None
    return model.to(device).eval(), job.data.test_time_mirrors


def exported_test_time_mirrors(meta: dict) -> bool:
    """An export made before the field existed trained on the paper's flips."""
    return meta.get("test_time_mirrors", True) is not False
