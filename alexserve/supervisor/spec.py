"""A job spec: the training config plus what the supervisor needs to run it.

    # job.yaml
    name: demo                 # optional label shown by `alexserve job list`
    max_restarts: 2            # relaunches from the newest checkpoint after a worker dies
    run_dir: demo              # optional; history and checkpoints (run_dir/checkpoints, or config.train.checkpoint_dir)
    continues: job-3           # optional; take over job-3's folders (it must have ended) and continue its run
    config:                    # a JobConfig (alexserve/config.py): model, data, optim, train, dist
      data: {source: folder, train_dir: /data/imagenet/train}
      train: {batch_size: 128}

`run_dir` and `config.train.checkpoint_dir` are relative to the supervisor's
runs root and may not leave it, nor share a folder with another job
(`job_paths.py`); other relative paths (data) are resolved by the workers against
the supervisor's working directory.
An invalid spec is rejected with every bad field named, before anything is launched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from alexserve.config import (
    ConfigError,
    JobConfig,
    StrictModel,
    format_validation_error,
    parse_overrides,
    read_config_file,
    set_dotted,
)
from alexserve.contract.worker_messages import JobId


class SpecError(ConfigError):
    """A job spec that cannot be run; the message names the origin and every bad field."""


class JobSpec(StrictModel):
    """One training job as submitted to the supervisor."""

    name: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="A label for humans; the supervisor assigns the job id.",
    )
    max_restarts: int = Field(
        2,
        ge=0,
        le=100,
        description="Relaunches (from the newest complete checkpoint) after a worker dies, before the job fails.",
    )
    run_dir: Path | None = Field(
        None,
        description="History and checkpoints (run_dir/checkpoints), relative to the supervisor's runs root; "
        "replaces config.train.run_dir. None: config.train.run_dir when set in the spec, else the folder of the "
        "job it continues, else RUNS_ROOT/JOB_ID.",
    )
    continues: JobId | None = Field(
        None,
        description="The id of an ended job whose folders this job takes over, continuing from its checkpoints. "
        "Without it, a folder already used by a recorded job is refused.",
    )
    num_pairs: int = Field(
        1, ge=1, le=32, description="Tower pairs (data parallel) on this node: torchrun starts 2 * num_pairs workers."
    )
    config: JobConfig = Field(
        description="The training job (model, data, optim, train, dist); `{}` is the paper's full run."
    )


def spec_from_tree(tree: Any, origin: str = "job spec", overrides: list[str] = ()) -> JobSpec:
    """Validates a parsed spec; `overrides` are `config.train.max_steps=10`-style strings."""
    if not isinstance(tree, dict):
        raise SpecError(f"{origin}: the top level must be a mapping, got {type(tree).__name__}")
    try:
        for key, value in parse_overrides(list(overrides)):
            set_dotted(tree, key, value)
    except ConfigError as err:
        raise SpecError(str(err)) from None
    try:
        return JobSpec.model_validate(tree)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, origin)) from None


def read_spec_tree(path: Path) -> dict[str, Any]:
    """The YAML or JSON mapping in `path` (errors name the file)."""
    try:
        return read_config_file(path)
    except ConfigError as err:
        raise SpecError(str(err)) from None


def load_spec(path: Path, overrides: list[str] = ()) -> JobSpec:
    return spec_from_tree(read_spec_tree(path), str(path), overrides)
