"""`alexserve prepare SRC DST`: the paper's one-time preprocessing of an ImageNet-style tree.

    alexserve prepare /data/imagenet /data/imagenet-256            # all cores
    alexserve prepare data/synth data/synth-prepared --workers 2

Shorter side to the scale (256 in the paper), central square, RGB JPEG out; then
the training mean image and RGB PCA (DST/stats.npz), the class index
(DST/classes.json) and DST/prepare_report.json, which lists every converted and
every rejected input with its reason, and every entry skipped (a symlink
leaving SRC, broken or looping, a FIFO, a device, ...). Images above
--max-image-pixels are rejected from their header, undecoded. Re-running
finishes an interrupted job.
SRC layouts and label files: see `alexserve.data.prepare`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alexserve.cli.arguments import add_max_image_pixels
from alexserve.config import ConfigError
from alexserve.data.prepare import prepare, scale_size_for
from alexserve.data.prepared_tree import REPORT_FILE, DatasetError

REJECTIONS_SHOWN = 10


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexserve prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("src", type=Path, help="ImageNet-style tree: SRC/train/<synset>/*, SRC/val/...")
    parser.add_argument("dst", type=Path, help="output tree (created; re-run to finish an interrupted job)")
    parser.add_argument("--config", type=Path, help="job config whose data.scale_size to use")
    parser.add_argument(
        "--scale-size",
        type=int,
        help="shorter side and crop (default: the config's data.scale_size, or 256:224 of "
        "its model.input_size; else 256, the paper's)",
    )
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the prepared images (default 90)")
    parser.add_argument("--val-labels", type=Path, help="labels file for a flat val/ folder")
    parser.add_argument(
        "--synsets", type=Path, help="synset per line, in the order 1-based integer val labels refer to"
    )
    parser.add_argument("--class-names", type=Path, help="'<synset> <name>' per line (default SRC/synset_words.txt)")
    add_max_image_pixels(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = prepare(
            args.src,
            args.dst,
            scale_size=args.scale_size or scale_size_for(args.config),
            workers=args.workers,
            quality=args.quality,
            val_labels=args.val_labels,
            synsets_file=args.synsets,
            class_names=args.class_names,
            max_image_pixels=args.max_image_pixels,
        )
    except (DatasetError, ConfigError) as err:
        print(f"prepare: {err}", file=sys.stderr)
        return 2
    print(
        f"prepare: {summary['inputs']} inputs: {summary['ok']} ok, {len(summary['converted'])} converted, "
        f"{len(summary['rejected'])} rejected, {len(summary['skipped'])} entries skipped "
        f"(reasons in {args.dst / REPORT_FILE}); "
        f"{summary['train_images']} train / {summary['val_images']} val images, {summary['classes']} classes",
        file=sys.stderr,
    )
    for r in summary["rejected"][:REJECTIONS_SHOWN]:
        print(f"  rejected {r['src']}: {r['reason']}", file=sys.stderr)
    for r in [s for s in summary["skipped"] if not s["reason"].startswith("hidden")][:REJECTIONS_SHOWN]:
        print(f"  skipped {r['path']}: {r['reason']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
