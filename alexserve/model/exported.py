"""The exported model file: the grouped single-process net in one file, no training code needed.

    import torch
    from alexserve.model.exported import load_exported
    model, meta = load_exported("alexnet.pt")       # AlexNetGrouped in eval mode
    logits = model(images)                           # images: [N, 3, S, S], mean-subtracted 0..255 RGB

The file is a plain dict of tensors, numbers and strings (loaded with
`torch.load(weights_only=True)`): `format`, `model_config` (ModelConfig fields),
`state_dict` (grouped layout), `classes` (list of {index, synset, name}) and
`mean_image` ([scale, scale, 3] float32, the training mean to subtract) when the
training data was a prepared tree, and `step` (the checkpoint it came from).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from alexserve.config import ModelConfig
from alexserve.model.grouped import AlexNetGrouped

EXPORT_FORMAT = "alexserve-grouped/1"


class ExportError(ValueError):
    """A file that is not a loadable alexserve export; the message names it."""


def load_exported(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[AlexNetGrouped, dict[str, Any]]:
    path = Path(path)
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ExportError(f"{path}: no such file") from None
    except Exception as err:  # torch raises several types for refused or damaged pickles
        raise ExportError(
            f"{path}: not a loadable export ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    if not isinstance(content, dict) or content.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{path}: not an alexserve export (expected format {EXPORT_FORMAT!r})")
    cfg = ModelConfig.model_validate(content["model_config"])
    model = AlexNetGrouped(cfg)
    model.load_state_dict(content["state_dict"])
    model.eval()
    return model, content
