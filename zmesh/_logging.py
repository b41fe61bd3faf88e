"""Logging helpers for a library: no handlers here (the CLI configures them), and warnings
about misbehaving peers that cannot flood the log.

Rule: one misbehaving peer (or a storm of bad requests) produces at most one line per
``interval`` seconds per key; the next line says how many were suppressed meanwhile.
The clock is passed in (tests inject one).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable


class RateLimited:
    """``warn(key, msg, *args)`` logs at most once per ``interval`` seconds for each key."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 1024) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._max_keys = max_keys
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: Any) -> bool:
        """Log unless ``key`` logged within the interval; True if a line was written."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        if len(self._last) >= self._max_keys and key not in self._last:  # bounded memory
            self._last.clear()
            self._suppressed.clear()
        self._last[key] = now
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            msg += " (%d similar suppressed in the last %g s)"
            args = (*args, skipped, self._interval)
        self._log.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, key, msg, *args)
