"""`alexserve export CKPT OUT`: a committed checkpoint -> one single-process model file.

CKPT is a checkpoint folder (`.../checkpoints/step-000001234`) or a checkpoint
directory (its newest complete checkpoint is used). The output loads with
`alexserve.model.exported.load_exported` (model code only) or a bare
`torch.load(..., weights_only=True)`. Library: `alexserve.checkpoint.export`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alexserve.checkpoint.export import export_checkpoint
from alexserve.checkpoint.store import CheckpointError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexserve export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint folder, or a directory of checkpoints")
    parser.add_argument("out", type=Path, help="model file to write (atomically)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = export_checkpoint(args.checkpoint, args.out)
    except CheckpointError as err:
        print(f"alexserve export: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
