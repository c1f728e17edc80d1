"""`alexserve predict MODEL IMAGE...`: the top-5 classes of raw images, with probabilities.

Runs the paper's test-time path on images of any size: shorter side to the
training scale, central square, minus the training mean image, ten crops, the
softmax averaged over them. MODEL is a file written by `alexserve export`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from alexserve.data.raw_images import load_ten_crops
from alexserve.model.exported import ExportError, load_exported


def predict(model, mean_image, paths: list[Path], top: int = 5) -> list[list[tuple[int, float]]]:
    crops = load_ten_crops(paths, mean_image, model.cfg.input_size)
    with torch.no_grad():
        n = crops.shape[0]
        probs = model(crops.flatten(0, 1)).softmax(dim=1).view(n, 10, -1).mean(dim=1)
    values, indices = probs.topk(min(top, probs.shape[1]), dim=1)
    return [[(int(i), float(v)) for i, v in zip(row_i, row_v)] for row_i, row_v in zip(indices, values)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alexserve predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="file written by `alexserve export`")
    parser.add_argument("images", type=Path, nargs="+")
    args = parser.parse_args(argv)
    try:
        model, meta = load_exported(args.model)
    except ExportError as err:
        print(f"alexserve predict: {err}", file=sys.stderr)
        return 2
    if "mean_image" not in meta:
        print(f"alexserve predict: {args.model} has no mean image (its job did not train on a prepared tree)", file=sys.stderr)
        return 2
    names = {c["index"]: f"{c['name']} ({c['synset']})" if c["name"] != c["synset"] else c["synset"] for c in meta.get("classes", [])}
    try:
        results = predict(model, meta["mean_image"].numpy(), args.images)
    except ValueError as err:
        print(f"alexserve predict: {err}", file=sys.stderr)
        return 2
    for path, ranked in zip(args.images, results):
        print(path)
        for index, prob in ranked:
            print(f"  {prob:6.1%}  {names.get(index, f'class {index}')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
