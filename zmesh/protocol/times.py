"""Wall-clock times as people and older clients write them: one parser for every surface that
takes a time (the gateway's body fields, the CLI's ``--since``).

Rules it keeps:

* A time is Unix seconds (a number) or an ISO 8601 string. ``Z`` and ``z`` mean UTC on every
  Python zmesh runs on (3.10's ``fromisoformat`` does not read them itself). A string with no
  zone is read in the zone the caller names: UTC for machine-written times (the predecessor's
  clients sent ``datetime.utcnow().isoformat()``), local time for what a person types.
* A string is never read as a number: ``"20251112"`` is an ISO 8601 date, and a digit
  string is ambiguous, so Unix seconds come as a JSON number.
* The answer is finite and lies in 1970-01-01..9999-12-31 (UTC). Anything else is a
  ``bad_request`` naming the field, in one line that never echoes a control character.
* Durations ago (``90s``, ``10m``, ``2h``, ``7d``) are read here too, for ``--since``.
* Pure: the caller passes ``now`` where a duration needs it.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

from ..errors import BadRequest
from .fields import escape_controls

#: the latest time accepted: 9999-12-31T23:59:59Z (datetime's own limit)
MAX_TIME_S = 253402300799.0
#: a duration ago: a number and a unit
DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: what a time field accepts (the gateway's schema descriptions and the CLI's help say this)
TIME_RULE = ("Unix seconds (a number) or an ISO 8601 time such as 2025-11-12T13:00:00Z or "
             "2025-11-12T13:00:00.123456 (no zone: UTC)")


def _shown(text: str) -> str:
    return repr(escape_controls(text.strip())[:40])


class TimeError(ValueError):
    """Why a value is not a time, without the field's name (the caller names it).
    ``unreadable``: it is not written as a time at all (rather than out of range)."""

    def __init__(self, message: str, *, unreadable: bool) -> None:
        super().__init__(message)
        self.unreadable = unreadable


def iso_seconds(text: str, *, naive_utc: bool = True) -> float:
    """Unix seconds of an ISO 8601 time; without a zone it is UTC (``naive_utc``) or local."""
    raw = text.strip()
    if raw[-1:] in ("Z", "z"):
        raw = raw[:-1] + "+00:00"
    try:
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise TimeError(f"must be {TIME_RULE}; {_shown(text)} is not", unreadable=True) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc) if naive_utc else when.astimezone()
    try:
        seconds = when.timestamp()
    except (ValueError, OverflowError, OSError):  # year 1 in a zone east of UTC, and the like
        raise TimeError(f"{_shown(text)} is out of the clock's range", unreadable=False) from None
    return _in_range(seconds)


def _in_range(seconds: float) -> float:
    if not math.isfinite(seconds) or not 0.0 <= seconds <= MAX_TIME_S:
        raise TimeError(f"must be a time between 1970-01-01 and 9999-12-31 (Unix seconds 0..{MAX_TIME_S:.0f})",
                        unreadable=False)
    return seconds


def _seconds(value: Any, naive_utc: bool) -> float:
    if isinstance(value, bool):
        raise TimeError(f"must be {TIME_RULE}, not a boolean", unreadable=True)
    if isinstance(value, (int, float)):
        try:
            return _in_range(float(value))
        except OverflowError:  # an int beyond a double
            return _in_range(math.inf)
    if isinstance(value, str):
        if len(value) > 64:
            raise TimeError(f"must be {TIME_RULE}; it is longer than 64 characters", unreadable=True)
        return iso_seconds(value, naive_utc=naive_utc)
    raise TimeError(f"must be {TIME_RULE}", unreadable=True)


def parse_time(name: str, value: Any, *, naive_utc: bool = True) -> float:
    """Unix seconds of ``value``: a number of Unix seconds or an ISO 8601 string (module
    rules); a ``bad_request`` naming ``name`` otherwise."""
    try:
        return _seconds(value, naive_utc)
    except TimeError as exc:
        raise BadRequest(f"field '{name}' {exc}", {"field": name}) from None


def duration_ago(text: str, now: float) -> float | None:
    """The time ``text`` (``90s``, ``10m``, ``2h``, ``7d``) before ``now``, never below 0;
    None when ``text`` is not a duration."""
    match = DURATION.fullmatch(text.strip())
    if match is None:
        return None
    return max(0.0, now - float(match.group(1)) * UNIT_S[match.group(2)])
