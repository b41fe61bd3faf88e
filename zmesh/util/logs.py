"""Logging helpers for a library: no handlers here (the CLI configures them), warnings
about misbehaving peers that cannot flood the log, and the JSON line format.

Rules it keeps:

* One misbehaving peer (or a storm of bad requests) produces at most one line per
  ``interval`` seconds per key; the next line says how many were suppressed meanwhile.
  The clock is passed in (tests inject one).
* A notable event (start, stop, a refused client, an expiry storm, the store filling up)
  is logged with ``extra={"event": NAME, ...fields}``: in text the message says it all, in
  JSON (:class:`JsonFormatter`) the event's name and fields are keys of their own, so a log
  pipeline filters on ``event`` instead of parsing prose.
* A JSON record is one line of one object, whatever the message holds (newlines in it are
  escaped by the encoder); values that JSON cannot hold are written as their str().
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any, Callable

import orjson

#: LogRecord attributes that are the record's own, not fields a caller passed in ``extra``
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


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

    def log(self, level: int, key: str, msg: str, *args: Any, extra: dict[str, Any] | None = None) -> bool:
        """Log unless ``key`` logged within the interval; True if a line was written
        (``extra``: the event's name and fields, see the module docstring)."""
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
            extra = {**(extra or {}), "suppressed": skipped}
        self._log.log(level, msg, *args, extra=extra)
        return True

    def warning(self, key: str, msg: str, *args: Any, extra: dict[str, Any] | None = None) -> bool:
        return self.log(logging.WARNING, key, msg, *args, extra=extra)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601 with ms), ``level``, ``logger``,
    ``msg``, the fields passed in ``extra`` (``event`` first among them), ``exc`` for a
    traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()

