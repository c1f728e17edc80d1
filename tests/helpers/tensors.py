"""Tensor comparisons that say what differs."""

from __future__ import annotations

from collections.abc import Callable


def context(what: str) -> Callable[[str], str]:
    """A `msg` for `torch.testing.assert_close`: `what`, then torch's own account of where the tensors differ.

    Built when called, so a loop's variables are read at the comparison, not later.
    """
    return lambda message: f"{what}:\n{message}"
