"""The base of every config section: unknown fields and non-finite numbers are errors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names file and fields."""


class StrictModel(BaseModel):
    """Unknown fields are errors: a typo must not silently fall back to a default."""

    # No number may be NaN or infinite anywhere in a job: `allow_inf_nan=False` refuses them at every float field.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
