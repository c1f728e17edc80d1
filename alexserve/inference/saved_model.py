"""A saved model -> `AlexNetGrouped` in eval mode: an exported file or a checkpoint, whichever `path` is."""

from __future__ import annotations

from pathlib import Path

import torch

from alexserve.checkpoint.export import load_grouped_state
from alexserve.model import AlexNetGrouped
from alexserve.model.exported import load_exported


def load_model(path: Path, device: torch.device) -> AlexNetGrouped:
    """`path` is a file written by `alexserve export`, a checkpoint folder, or a directory of checkpoints
    (its newest complete one). Raises `ExportError` or `CheckpointError` naming the path."""
    path = Path(path)
    if path.is_file():
        model, _ = load_exported(path, map_location=device)
        return model.to(device)
    job, state_dict, _ = load_grouped_state(path)
    model = AlexNetGrouped(job.model)
    model.load_state_dict(state_dict)
    return model.to(device).eval()
