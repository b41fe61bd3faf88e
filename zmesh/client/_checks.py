"""Checks of a client method's Python arguments, before any request is built (every module
of the client uses them; they import nothing of the client).

Rules: a bad argument raises a ZmeshError naming it (``InvalidArgument`` for a Python-only
mistake, ``BadRequest`` with the broker's own wording for a wire field), never a
TypeError/ValueError from inside; a bare string where a list of names is due is refused
(``requires="python"`` would otherwise become six capabilities); a flag must be a bool and a
timeout a finite number of seconds within bounds.
"""

from __future__ import annotations

import math
from typing import Any

from .. import protocol
from ..errors import BadRequest, InvalidArgument

#: bounds on a client's per-call timeout (seconds)
MIN_TIMEOUT_S = 0.01
MAX_TIMEOUT_S = 3600.0


def names(field: str, value: Any) -> list[str] | None:
    """A list of names from any iterable of strings; None stays None; a str is refused."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise BadRequest(f"field '{field}' must be a list of strings, not a single string "
                         f"(did you mean [{value!r}]?)", {"field": field})
    try:
        return list(value)
    except TypeError:
        raise BadRequest(f"field '{field}' must be a list of strings, not {type(value).__name__}",
                         {"field": field}) from None


def check_field(op: str, field: str, value: Any) -> Any:
    """One argument checked as the op's wire field (for constructor arguments)."""
    return protocol.check_value(protocol.OPS[op].by_name[field], value)


def check_timeout(field: str, value: Any, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not MIN_TIMEOUT_S <= value <= MAX_TIMEOUT_S:
        raise InvalidArgument(f"{field} must be a number of seconds in {MIN_TIMEOUT_S:g}..{MAX_TIMEOUT_S:g}, "
                              f"got {value!r}", {"field": field})
    return float(value)


def check_bool(field: str, value: Any) -> bool:
    """A flag must be True or False: bool("no") and bool(nan) are True, never a silent yes."""
    if not isinstance(value, bool):
        raise InvalidArgument(f"{field} must be True or False, got {value!r}", {"field": field})
    return value


def check_callback(callback: Any, field: str = "callback") -> None:
    if not callable(callback):
        raise InvalidArgument(f"{field} must be callable, not {type(callback).__name__}", {"field": field})


def check_receiver(agent: str | None, what: str) -> None:
    """Only an agent's client is pushed messages (``what``: the method that needs them)."""
    if not agent:
        raise InvalidArgument(f"{what} needs an agent: messages are pushed to an agent's connection",
                              {"field": "agent"})
