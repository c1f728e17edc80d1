"""Writes this folder's schemas from the kubernetes-validate wheel: `python extract.py kubernetes_validate-*.whl`.

The top-level schemas are copied byte for byte. `_definitions.json` keeps only the definitions that they and
ROOT_DEFINITIONS reach through `$ref` (the whole file is 1.3 MB); each kept definition is unchanged and the
file is written as upstream writes it (json.dumps, indent 2, ASCII), so every kept line is upstream's line.
"""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from pathlib import Path

FLAVOUR = "kubernetes_validate/kubernetes-json-schema/v1.31.0-local-strict/"
TOP_LEVEL = ["podtemplatespec-v1.json", "persistentvolumeclaim-v1.json", "configmap-v1.json"]
# Referenced by ../kubeflow/pytorchjob-v1-openapi.yaml in place of the subtrees the CRD inlines.
ROOT_DEFINITIONS = ["io.k8s.api.core.v1.PodSpec", "io.k8s.api.autoscaling.v2.MetricSpec"]
REF_PREFIXES = ("/api/_definitions.json#/$defs/", "#/$defs/")  # from the top-level files; inside _definitions


def refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def main(wheel: str) -> None:
    here = Path(__file__).resolve().parent
    with zipfile.ZipFile(wheel) as archive:
        whole = json.loads(archive.read(FLAVOUR + "_definitions.json"))
        wanted = [REF_PREFIXES[1] + name for name in ROOT_DEFINITIONS]
        for name in TOP_LEVEL:
            data = archive.read(FLAVOUR + name)
            (here / name).write_bytes(data)
            wanted += refs(json.loads(data))
    kept: set[str] = set()
    while wanted:
        ref = wanted.pop()
        prefix = next(prefix for prefix in REF_PREFIXES if ref.startswith(prefix))
        name = ref[len(prefix) :]
        if name not in kept:
            kept.add(name)
            wanted += refs(whole["$defs"][name])
    subset = dict(whole, **{"$defs": {k: v for k, v in whole["$defs"].items() if k in kept}})
    (here / "_definitions.json").write_text(json.dumps(subset, indent=2))
    print(f"{len(kept)} of {len(whole['$defs'])} definitions; wheel sha256 {sha256(Path(wheel))}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


if __name__ == "__main__":
    main(sys.argv[1])
