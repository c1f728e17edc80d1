"""The exported model file: the grouped single-process net in one file, no training code needed.

    import torch
    from alexserve.model.exported import load_exported
    model, meta = load_exported("alexnet.pt")       # AlexNetGrouped in eval mode
    logits = model(images)                           # images: [N, 3, S, S], mean-subtracted 0..255 RGB

The file is a plain dict of tensors, numbers and strings (loaded with
`torch.load(weights_only=True)`): `format`, `model_config` (ModelConfig fields),
`state_dict` (grouped layout), `classes` (list of {index, synset, name}) and
`mean_image` ([scale, scale, 3] float32, the training mean to subtract) when the
training data was a prepared tree, `step` (the checkpoint it came from), and
`content_sha256`, the SHA-256 of everything else (`content_digest`).

`load_exported` trusts nothing in the file. In order, each failure an
`ExportError` of one line naming the file: a regular file that torch loads
with weights_only; the format and every key present; the digest recomputed
and compared (flipped bytes anywhere in a tensor or a value show here); the
model config valid; the state dict's keys, dtypes and shapes exactly those the
config gives (compared on the meta device, so an absurd class count allocates
nothing); every number finite; the mean image and class list consistent with
the config. Only then is the model built.

The digest covers values, not the file's bytes: each tensor's name, dtype,
shape and raw bytes, and every other value as strict JSON, walked in sorted key
order. It does not depend on how torch lays the zip out, so any reader can
recompute it from the loaded dict.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from alexserve.config import ModelConfig
from alexserve.model.grouped import AlexNetGrouped
from alexserve.untrusted_files import UntrustedFileError, open_regular_file

EXPORT_FORMAT = "alexserve-grouped/1"
DIGEST_KEY = "content_sha256"
REQUIRED_KEYS = ("format", "model_config", "state_dict", "step", DIGEST_KEY)


class ExportError(ValueError):
    """A file that is not a loadable alexserve export; the message (one line) names it."""


# ---------------------------------------------------------------- the digest


def content_digest(content: dict[str, Any]) -> str:
    """SHA-256 of every entry of an export's content except the digest itself (see the module docstring).

    Raises ValueError for a value that is not a tensor, a finite number, a string, None,
    or a list or str-keyed dict of those.
    """
    sha = hashlib.sha256()
    _feed(sha, {key: value for key, value in content.items() if key != DIGEST_KEY}, "content")
    return sha.hexdigest()


def _feed(sha, value: Any, where: str) -> None:
    if isinstance(value, torch.Tensor):
        header = json.dumps({"dtype": str(value.dtype), "shape": list(value.shape)}, sort_keys=True)
        sha.update(b"T" + header.encode() + b"\0")
        flat = value.detach().to("cpu").contiguous().reshape(-1)
        if flat.numel():
            sha.update(flat.view(torch.uint8).numpy())
    elif isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise ValueError(f"{where} has a key that is not a string")
        sha.update(b"D%d\0" % len(value))
        for key in sorted(value):
            _feed(sha, key, where)
            _feed(sha, value[key], f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        sha.update(b"L%d\0" % len(value))
        for index, item in enumerate(value):
            _feed(sha, item, f"{where}[{index}]")
    elif isinstance(value, str):
        data = value.encode()
        sha.update(b"S%d\0" % len(data) + data)
    elif value is None or isinstance(value, (bool, int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where} is {value}, not a finite number")
        sha.update(b"N" + json.dumps(value).encode() + b"\0")
    else:
        raise ValueError(f"{where} is a {type(value).__name__}, which an export does not hold")


def seal(content: dict[str, Any]) -> dict[str, Any]:
    """`content` with its `content_sha256` added: what `alexserve export` saves."""
    return {**content, DIGEST_KEY: content_digest(content)}


# ---------------------------------------------------------------- loading


def load_exported(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[AlexNetGrouped, dict[str, Any]]:
    """(the model in eval mode on `map_location`, the file's content on the CPU); ExportError for any damage."""
    path = Path(path)
    content = _load_content(path)
    missing = [key for key in REQUIRED_KEYS if key not in content]
    if missing == [DIGEST_KEY]:
        raise ExportError(
            f"{path}: has no {DIGEST_KEY} (written before exports carried one, or altered): export it again"
        )
    if missing:
        raise ExportError(f"{path}: incomplete export: missing {', '.join(missing)}")
    try:
        digest = content_digest(content)
    except ValueError as err:
        raise ExportError(f"{path}: damaged export: {err}") from None
    if digest != content[DIGEST_KEY]:
        raise ExportError(f"{path}: corrupt: the SHA-256 of its content differs from the one recorded at export")
    cfg = _model_config(path, content["model_config"])
    _check_state_dict(path, content["state_dict"], cfg)
    _check_extras(path, content, cfg)
    model = AlexNetGrouped(cfg)
    try:
        model.load_state_dict(content["state_dict"])
    except RuntimeError as err:
        raise ExportError(f"{path}: state_dict does not fit: {str(err).splitlines()[0]}") from None
    model.eval()
    return model.to(map_location), content


def _load_content(path: Path) -> dict[str, Any]:
    try:
        file, _ = open_regular_file(path)
    except UntrustedFileError as err:
        raise ExportError(f"{path}: no such file" if err.missing else str(err)) from None
    try:
        with file:
            content = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for refused or damaged pickles
        first = str(err).splitlines()[0] if str(err) else ""
        raise ExportError(f"{path}: not a loadable export ({type(err).__name__}: {first})") from None
    if not isinstance(content, dict) or content.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{path}: not an alexserve export (expected format {EXPORT_FORMAT!r})")
    return content


def _model_config(path: Path, raw: Any) -> ModelConfig:
    try:
        cfg = ModelConfig.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'model_config'}: {e['msg']}" for e in err.errors()
        )
        raise ExportError(f"{path}: invalid model_config: {problems}") from None
    if cfg.num_classes is None:
        raise ExportError(f"{path}: model_config.num_classes is not set")
    return cfg


def _check_state_dict(path: Path, state_dict: Any, cfg: ModelConfig) -> None:
    """Keys, dtypes and shapes exactly the config's (built on the meta device: nothing allocated); finite values."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ExportError(f"{path}: state_dict is not a mapping of names to tensors")
    with torch.device("meta"):
        expected = AlexNetGrouped(cfg).state_dict()
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ExportError(
            f"{path}: state_dict does not fit its model_config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, want in expected.items():
        have = state_dict[name]
        if have.shape != want.shape or have.dtype != want.dtype:
            raise ExportError(
                f"{path}: state_dict[{name!r}] is {have.dtype} {tuple(have.shape)}, "
                f"its model_config gives {want.dtype} {tuple(want.shape)}"
            )
        if have.is_floating_point() and not bool(have.isfinite().all()):
            raise ExportError(f"{path}: state_dict[{name!r}] holds a value that is not finite")


def _check_extras(path: Path, content: dict[str, Any], cfg: ModelConfig) -> None:
    step = content["step"]
    if type(step) is not int or step < 0:
        raise ExportError(f"{path}: step is {step!r}, expected an int >= 0")
    mean = content.get("mean_image")
    if mean is not None:
        if (
            not isinstance(mean, torch.Tensor)
            or not mean.is_floating_point()
            or mean.dim() != 3
            or mean.shape[0] != mean.shape[1]
            or mean.shape[2] != 3
            or mean.shape[0] < cfg.input_size
        ):
            shape = tuple(mean.shape) if isinstance(mean, torch.Tensor) else type(mean).__name__
            raise ExportError(
                f"{path}: mean_image is {shape}, expected a float [S, S, 3] with S >= input_size {cfg.input_size}"
            )
        if not bool(mean.isfinite().all()):
            raise ExportError(f"{path}: mean_image holds a value that is not finite")
    classes = content.get("classes")
    if classes is not None:
        ok = isinstance(classes, list) and all(
            isinstance(c, dict)
            and c.get("index") == i
            and type(c.get("index")) is int
            and isinstance(c.get("synset"), str)
            and isinstance(c.get("name"), str)
            for i, c in enumerate(classes)
        )
        if not ok:
            raise ExportError(f"{path}: classes is not a list of {{index, synset, name}} with indices 0, 1, ...")
        if len(classes) > cfg.num_classes:
            raise ExportError(f"{path}: {len(classes)} classes listed, model_config.num_classes is {cfg.num_classes}")
