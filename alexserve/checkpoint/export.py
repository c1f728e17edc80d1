"""A committed checkpoint -> one single-process model file (the `alexserve export` library).

A checkpoint holds one shard per tower; the exported file holds the grouped
(`AlexNetGrouped`) state dict, the model config and, when the job trained on a
prepared tree that is still there, the training mean image and the class names
that `alexserve predict` needs. It loads with `alexserve.model.exported.load_exported`
(model code only) or a bare `torch.load(..., weights_only=True)`, and carries the
SHA-256 of its content (`alexserve.model.exported.seal`), which `load_exported`,
`alexserve eval` and `alexserve predict` check.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from alexserve.checkpoint.run_checkpointer import SHARD_NAMES
from alexserve.checkpoint.store import CheckpointError, CheckpointRef, CheckpointStore
from alexserve.config import JobConfig
from alexserve.durable import write_through
from alexserve.model.exported import EXPORT_FORMAT, seal
from alexserve.model.tower_split import join_tower_states


def find_checkpoint(path: Path) -> tuple[CheckpointStore, CheckpointRef]:
    """The checkpoint at `path`: a checkpoint folder (`.../step-000001234`), or a directory's newest complete one."""
    path = Path(path)
    store = CheckpointStore(path, keep_last=1_000_000, shard_names=SHARD_NAMES)
    ref = store.latest()
    if ref is None:  # maybe a single checkpoint folder
        store = CheckpointStore(path.parent, keep_last=1_000_000, shard_names=SHARD_NAMES)
        ref = next((r for r in store.committed() if r.path.resolve() == path.resolve()), None)
    if ref is None:
        raise CheckpointError(f"{path}: neither a complete checkpoint nor a folder holding one")
    return store, ref


def load_grouped_state(path: Path) -> tuple[JobConfig, dict[str, torch.Tensor], int]:
    """(the job, both towers' weights joined in the grouped layout, the step) of the checkpoint at `path`."""
    store, ref = find_checkpoint(path)
    try:
        job = JobConfig.model_validate(store.load_config(ref))
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise CheckpointError(f"{ref.path / 'config.json'}: invalid job config: {problems}") from None
    towers = []
    for name in SHARD_NAMES:
        model = store.load(ref, name).get("model")
        if not isinstance(model, dict) or not all(isinstance(t, torch.Tensor) for t in model.values()):
            raise CheckpointError(f"{ref.path / (name + '.pt')}: has no model state dict")
        bad = next((key for key, t in model.items() if t.is_floating_point() and not bool(t.isfinite().all())), None)
        if bad is not None:
            raise CheckpointError(f"{ref.path / (name + '.pt')}: model[{bad!r}] holds a value that is not finite")
        towers.append(model)
    try:
        state = join_tower_states(job.model, towers)
    except (KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{ref.path}: the tower shards do not fit its config: {err}") from None
    return job, state, ref.step


def prepared_extras(job: JobConfig) -> dict[str, Any]:
    """Mean image and class names, when the job trained on a prepared tree that is still there."""
    if job.data.source != "folder":
        return {}
    from alexserve.data.factory import open_prepared_tree
    from alexserve.data.prepared_tree import DatasetError

    try:
        tree = open_prepared_tree(job)
    except (DatasetError, OSError) as err:
        print(f"export: no mean image or class names ({err})", file=sys.stderr)
        return {}
    return {
        "mean_image": torch.from_numpy(tree.stats.mean_image.copy()),
        "classes": [{"index": c.index, "synset": c.synset, "name": c.name} for c in tree.classes],
    }


def export_checkpoint(checkpoint: Path, out: Path) -> Path:
    """Writes the checkpoint at `checkpoint` as one model file at `out` (atomically); returns `out`."""
    job, state_dict, step = load_grouped_state(checkpoint)
    content = {
        "format": EXPORT_FORMAT,
        "model_config": job.model.model_dump(mode="json"),
        "state_dict": state_dict,
        "step": step,
        "test_time_mirrors": job.data.test_time_mirrors,
        **prepared_extras(job),
    }
    try:
        sealed = seal(content)
    except ValueError as err:
        raise CheckpointError(f"{checkpoint}: cannot export: {err}") from None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_through(out, lambda f: torch.save(sealed, f))
    return out
