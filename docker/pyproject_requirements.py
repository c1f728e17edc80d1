"""Prints the requirements of pyproject.toml (base dependencies plus the named extras), one a line.

    python docker/pyproject_requirements.py pyproject.toml dali > requirements.txt

The Dockerfile installs these in a layer of their own, before the source is
copied, so a source edit does not reinstall every dependency; the test suite
runs this same script to check that the image installs what pyproject asks.
"""

from __future__ import annotations

import sys

try:
    import tomllib
except ImportError:  # Python 3.10: pip vendors the same parser
    from pip._vendor import tomli as tomllib


def requirements(pyproject_path: str, extras: list[str]) -> list[str]:
    with open(pyproject_path, "rb") as f:
        project = tomllib.load(f)["project"]
    optional = project.get("optional-dependencies", {})
    missing = [extra for extra in extras if extra not in optional]
    if missing:
        raise SystemExit(
            f"{pyproject_path}: no extra named {', '.join(missing)} (known: {', '.join(sorted(optional))})"
        )
    lines = list(project.get("dependencies", []))
    for extra in extras:
        lines.extend(optional[extra])
    return lines


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print("\n".join(requirements(sys.argv[1], sys.argv[2:])))
