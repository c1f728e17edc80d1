"""`alexserve export CKPT OUT`: a committed checkpoint -> one single-process model file.

CKPT is a checkpoint folder (`.../checkpoints/step-000001234`) or a checkpoint
directory (its newest complete checkpoint is used). The output loads with
`alexserve.model.exported.load_exported` (model code only) or a bare
`torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from alexserve.config import JobConfig
from alexserve.model.exported import EXPORT_FORMAT
from alexserve.model.tower_split import join_tower_states
from alexserve.checkpoint.store import CheckpointError, CheckpointRef, CheckpointStore
from alexserve.checkpoint.run_checkpointer import SHARD_NAMES


def find_checkpoint(path: Path) -> tuple[CheckpointStore, CheckpointRef]:
    path = Path(path)
    store = CheckpointStore(path, keep_last=1_000_000, shard_names=SHARD_NAMES)
    ref = store.latest()
    if ref is None:  # maybe a single checkpoint folder
        store = CheckpointStore(path.parent, keep_last=1_000_000, shard_names=SHARD_NAMES)
        ref = next((r for r in store.committed() if r.path.resolve() == path.resolve()), None)
    if ref is None:
        raise CheckpointError(f"{path}: neither a complete checkpoint nor a folder holding one")
    return store, ref


def prepared_extras(job: JobConfig) -> dict:
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


def export(checkpoint: Path, out: Path) -> Path:
    store, ref = find_checkpoint(checkpoint)
    job = JobConfig.model_validate(store.load_config(ref))
    towers = [store.load(ref, name)["model"] for name in SHARD_NAMES]
    content = {
        "format": EXPORT_FORMAT,
        "model_config": job.model.model_dump(mode="json"),
        "state_dict": join_tower_states(job.model, towers),
        "step": ref.step,
        **prepared_extras(job),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(content, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alexserve export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out)
    except CheckpointError as err:
        print(f"alexserve export: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
