"""A job from YAML or JSON and dotted overrides; every invalid field reported by name with its origin."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from alexserve.config.job import JobConfig, demo_config
from alexserve.config.strict_model import ConfigError
from alexserve.untrusted_files import UntrustedFileError, load_yaml, read_small_regular_file


def format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"{origin}: {err.error_count()} invalid field(s)"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """`section.field=value` strings; values are parsed as YAML scalars (so 64 is an int, 1e-3 a float)."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: not a YAML value: {err}") from None
        parsed.append((key.strip(), value))
    return parsed


def build_config(base: dict[str, Any], overrides: list[str] = (), origin: str = "config") -> JobConfig:
    tree = json.loads(json.dumps(base, default=str))  # deep copy, paths as strings
    for key, value in parse_overrides(list(overrides)):
        set_dotted(tree, key, value)
    try:
        return JobConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin)) from None


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML or JSON mapping; errors name the file. Only a small regular file is parsed, and no YAML aliases."""
    try:
        data = read_small_regular_file(Path(path))
        text = data.decode("utf-8")
    except UntrustedFileError as err:
        raise ConfigError(str(err)) from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text: {err.reason} at byte {err.start}") from None
    is_json = str(path).endswith(".json")
    try:
        tree = json.loads(text) if is_json else load_yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError, RecursionError) as err:
        raise ConfigError(f"{path}: not valid {'JSON' if is_json else 'YAML'}: {err}") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(tree).__name__}")
    return tree


def load_config(path: Path | None, overrides: list[str] = ()) -> JobConfig:
    """The job at `path` (or the embedded demo when None), with overrides applied."""
    if path is None:
        return build_config(demo_config().model_dump(mode="json"), overrides, origin="demo config")
    return build_config(read_config_file(path), overrides, origin=str(path))
