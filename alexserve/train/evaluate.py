"""`alexserve eval MODEL --data PREPARED`: top-1/top-5 error, centre crop and ten crops.

MODEL is an exported file (`alexserve export`) or a checkpoint (folder or
checkpoint directory). Runs the grouped model in one process (GPU if present).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from alexserve.config import DataConfig, JobConfig, TrainConfig
from alexserve.data.factory import build_eval_source
from alexserve.data.prepared_tree import DatasetError
from alexserve.model import AlexNetGrouped
from alexserve.model.exported import ExportError, load_exported
from alexserve.checkpoint.store import CheckpointError
from alexserve.train.evaluation import evaluate


def load_model(path: Path, device: torch.device) -> AlexNetGrouped:
    if path.is_file():
        model, _ = load_exported(path, map_location=device)
        return model.to(device)
    from alexserve.model.tower_split import join_tower_states
    from alexserve.checkpoint.run_checkpointer import SHARD_NAMES
    from alexserve.train.export import find_checkpoint

    store, ref = find_checkpoint(path)
    job = JobConfig.model_validate(store.load_config(ref))
    model = AlexNetGrouped(job.model)
    model.load_state_dict(join_tower_states(job.model, [store.load(ref, n)["model"] for n in SHARD_NAMES]))
    return model.to(device).eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alexserve eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="exported model file or checkpoint")
    parser.add_argument("--data", type=Path, required=True, help="prepared tree (made by `alexserve prepare`)")
    parser.add_argument("--split", default="val", choices=["val", "train"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--loader", default="dali", choices=["dali", "pil"])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = load_model(args.model, device)
        job = JobConfig(
            model=model.cfg,
            data=DataConfig(source="folder", train_dir=args.data / "train", val_dir=args.data / "val",
                            loader=args.loader, num_workers=args.workers),
            train=TrainConfig(batch_size=args.batch_size),
        )
        source = build_eval_source(job, device=device, split=args.split)
    except (ExportError, CheckpointError, DatasetError) as err:
        print(f"alexserve eval: {err}", file=sys.stderr)
        return 2
    try:
        with torch.no_grad():
            for mode in ("center", "ten_crop"):
                result = evaluate(model, source, mode)
                print(f"{mode.replace('_', '-'):>8}: top-1 error {result.top1_error:.4f}  top-5 error {result.top5_error:.4f}  "
                      f"({result.images} images)")
    finally:
        source.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
