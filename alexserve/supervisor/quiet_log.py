"""One log line per kind of noise and interval: a flood of bad messages must not flood the log."""

from __future__ import annotations

import logging
import time
from collections import Counter


class RateLimitedLog:
    """`log(key, line)` writes `line` at most once per `seconds` for each key, then says how many it held back."""

    def __init__(self, logger: logging.Logger, seconds: float = 10.0) -> None:
        self.logger, self.seconds = logger, seconds
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def __call__(self, key: str, line: str) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.seconds:
            self._held[key] += 1
            return
        held = self._held.pop(key, 0)
        self._last[key] = now
        self.logger.info(line + (f" (and {held} more like it in the last {self.seconds:g}s)" if held else ""))
