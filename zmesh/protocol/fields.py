"""Field kinds and limits: what every value that enters zmesh is checked against.

Rules it keeps:

* Every limit is a named constant here, and every field kind has one validator and one
  line of rule text (:data:`KIND_RULES`, shown in docs/PROTOCOL.md): the broker (on the
  wire), the clients (before sending), the CLI (options built from the same fields) and
  the config check values with these functions, so a limit is stated once.
* A refusal is a ``bad_request`` or ``too_large`` naming the field; it never echoes a
  control character.
* Pure: no I/O, no zmq, cheap to fuzz. protocol.py builds the op table from these.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import orjson

from ..errors import BadRequest, TooLarge
from . import globs
from .states import (
    AgentState,
    DeliveryState,
    Priority,
    Report,
    Severity,
    TaskStatus,
    values,
)

# ---------------------------------------------------------------- limits (one place)
#: largest inbound message the broker accepts, all frames together (also set as
#: ZMQ_MAXMSGSIZE per frame, so a larger frame is dropped by libzmq before it is read)
MAX_MESSAGE_BYTES = 1 << 20
#: ZMQ_MAXMSGSIZE on the broker: a frame up to this size is read and answered too_large (and
#: logged, with the peer); a larger one is cut off by libzmq, which drops the connection
MAX_FRAME_BYTES = 4 * MAX_MESSAGE_BYTES
MAX_FRAMES = 2
MAX_REQ_ID_BYTES = 64
MAX_OP_BYTES = 32
#: ids (tasks, agents) are keys in LMDB, whose keys are at most 511 bytes; the longest key
#: holds two ids (a dependency and the task waiting on it), so an id is at most 200 bytes
MAX_ID_BYTES = 200
#: short strings (a task type, a capability, a topic prefix)
MAX_NAME_CHARS = 256
MAX_TEXT_CHARS = 64 * 1024
MAX_LIST_ITEMS = 256
MAX_TTL_S = 7 * 24 * 3600.0
MIN_TTL_S = 0.1
#: longest a request may wait in a queue (a reserve with wait_s) before it is refused
MAX_WAIT_S = 3600.0
MAX_PRIORITY = 1_000_000
MAX_ATTEMPTS = 1000
MAX_LIST_LIMIT = 10_000
MAX_REPLAY_LIMIT = 10_000
#: largest integer a field takes (tokens, seq, lease ids): exact in every JSON parser
MAX_INT = 2**53
#: a published message's topic (after MESSAGE_PREFIX): dotted ASCII, SUB-filterable
MAX_TOPIC_CHARS = 128
#: a published message's data, JSON-encoded: every message is kept in the event log
MAX_MESSAGE_DATA_BYTES = 64 * 1024
#: published messages are events under this prefix, apart from the broker's own topics
MESSAGE_PREFIX = "msg."

#: a task's status. These tuples are the enums of protocol/states.py as plain strings, in
#: member order: the wire values, the CLI choices and the docs are built from them
STATUSES = values(TaskStatus)
#: what an agent may report (``completed`` is a moment: the agent is idle again after it)
REPORTS = values(Report)
#: an agent's presence state as shown (``report`` sets it; claiming makes an agent busy)
STATES = values(AgentState)
#: how bad a blocker is
SEVERITIES = values(Severity)
#: largest cost an agent may report (a running total, in whatever unit the agents use)
MAX_COST = 1e15

# ---------------------------------------------------------------- messages
#: message priorities, most urgent first (a delivery lane each; pending ones go in this order)
PRIORITIES = values(Priority)
#: where a message goes: one agent, every live member of a group, every live agent with a
#: capability, every live agent
ADDRESSES = ("to", "group", "capability", "all")
#: a recipient's delivery state (read and ack times are kept beside it)
DELIVERY_STATES = values(DeliveryState)
#: a requires_ack delivery not acked within ack_wait seconds is delivered again
DEFAULT_ACK_WAIT_S = 30.0
#: deliveries of a requires_ack message before it goes to the dead letters
DEFAULT_MAX_DELIVER = 5
MAX_DELIVER = 1000
#: messages kept per address (an agent's inbox, a group, a capability, everyone) and how
#: long a settled message is kept; both are broker settings, these their defaults
DEFAULT_MESSAGE_RETENTION = 1000
DEFAULT_MESSAGE_MAX_AGE_S = 7 * 24 * 3600.0
#: low-priority work may wait this long (seconds) while more urgent work keeps the broker busy
DEFAULT_LOW_BATCH_S = 0.5

# ---------------------------------------------------------------- the audit trail
#: what the trail records (docs/AUDIT.md): ops that change durable state and every refusal,
#: every op, or nothing. The broker setting ``audit`` takes one of them
AUDIT_MODES = ("writes", "all", "off")
DEFAULT_AUDIT = "writes"
#: records kept (the broker setting ``audit_retention``): the oldest goes when one more comes
DEFAULT_AUDIT_RETENTION = 1_000_000
MAX_AUDIT_RETENTION = 100_000_000

#: what each field kind accepts (docs/PROTOCOL.md shows this table)
KIND_RULES = {
    "id": f"a string of 1..{MAX_ID_BYTES} bytes of UTF-8 without control characters "
          "(U+0000-U+001F, U+007F-U+009F, U+2028, U+2029)",
    "name": f"a string of 1..{MAX_NAME_CHARS} characters without control characters",
    "namelist": f"a list of up to {MAX_LIST_ITEMS} names (duplicates dropped)",
    "idlist": f"a list of up to {MAX_LIST_ITEMS} ids (duplicates dropped)",
    "glob": f"a path pattern relative to the repository root, up to {globs.MAX_PATTERN_BYTES} bytes of UTF-8: "
            "* and ? inside a segment, ** as a whole segment (zero or more segments), a trailing / "
            "for everything below; no .., [ ], { } or \\",
    "globlist": f"a list of up to {MAX_LIST_ITEMS} path patterns (as glob; duplicates dropped)",
    "after": "empty, or an id (a paging cursor)",
    "text": f"a string of up to {MAX_TEXT_CHARS} characters (any, newlines included)",
    "int": "an integer, within the field's range",
    "ttl": "a finite number of seconds, within the field's range",
    "number": "a finite number, within the field's range",
    "choice": "one of the values the field lists",
    "bool": "true or false",
    "status": "one of " + ", ".join(STATUSES),
    "object": "a JSON object",
    "json": "any JSON value",
    "topic": f"1..{MAX_TOPIC_CHARS} characters of A-Z a-z 0-9 . _ -",
    "payload": f"any JSON value, at most {MAX_MESSAGE_DATA_BYTES} bytes encoded",
}


# ---------------------------------------------------------------- fields
@dataclass(frozen=True)
class Field:
    """One body field. ``kind`` names a validator in KINDS."""

    name: str
    kind: str
    required: bool = False
    default: Any = None
    doc: str = ""
    lo: float | None = None
    hi: float | None = None
    #: kind "choice": the values it accepts
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Op:
    """One op of the wire protocol: its fields, whether it writes, what it returns."""

    name: str
    doc: str
    fields: tuple[Field, ...] = ()
    #: True when the op may change durable state (its reply waits for the commit)
    writes: bool = False
    returns: str = ""
    errors: tuple[str, ...] = ()
    #: True for an admin op: with security on, only a key in the admins directory may run it
    admin: bool = False
    #: True for an op that shows what every client did (the audit trail): with security on,
    #: observer and admin keys may run it, agent keys may not
    operator: bool = False
    by_name: dict[str, Field] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.by_name.update({f.name: f for f in self.fields})

    @cached_property
    def plan(self) -> tuple[Step, ...]:
        """How a body from Python is checked, field by field (see :func:`plan`)."""
        return plan(self.fields, wire=False)

    @cached_property
    def wire_plan(self) -> tuple[Step, ...]:
        """How a body decoded from the wire is checked (JSON values need no re-encoding)."""
        return plan(self.fields, wire=True)


#: one field's check, ready to run: (name, required, default, copy the default, checker)
Step = tuple[str, bool, Any, bool, Callable[[str, Any], Any]]


# ---------------------------------------------------------------- validation
_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,%d}" % MAX_TOPIC_CHARS)
#: refused in ids and names: control characters (Unicode Cc) and the line/paragraph
#: separators; they break line-oriented output and logs and are never meant
CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _check_id(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"field '{name}' must be a string", {"field": name})
    if len(value) > MAX_ID_BYTES // 4 and len(value.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise TooLarge(f"field '{name}' is longer than {MAX_ID_BYTES} bytes of UTF-8", {"field": name})
    _check_utf8(name, value)
    return _plain(name, value)


def _plain(name: str, value: str) -> str:
    """Ids and names: not empty, no control characters."""
    if not value:
        raise BadRequest(f"field '{name}' must not be empty", {"field": name})
    if CONTROL_CHARS.search(value):
        raise BadRequest(f"field '{name}' must not contain control characters", {"field": name})
    return value


def _check_utf8(name: str, value: str) -> None:
    """A lone surrogate (possible from Python, never from JSON) cannot be encoded."""
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise BadRequest(f"field '{name}' is not valid Unicode (a lone surrogate)", {"field": name}) from None


def _check_name(name: str, value: Any) -> str:
    return _plain(name, _check_str(name, value, MAX_NAME_CHARS))


def _check_str(name: str, value: Any, limit: int = MAX_NAME_CHARS) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"field '{name}' must be a string", {"field": name})
    if len(value) > limit:
        raise TooLarge(f"field '{name}' is longer than {limit} characters", {"field": name})
    _check_utf8(name, value)
    return value


def _check_after(name: str, value: Any) -> str:
    """A paging cursor: empty (from the start) or an id."""
    return value if value == "" else _check_id(name, value)


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"field '{name}' must be an integer", {"field": name})
    return value


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"field '{name}' must be a number", {"field": name})
    try:
        number = float(value)
    except OverflowError:  # an int beyond a double
        number = math.inf
    if not math.isfinite(number):
        raise BadRequest(f"field '{name}' must be a finite number", {"field": name})
    return number


def _check_list(name: str, value: Any, item: Callable[[str, Any], Any]) -> list[str]:
    if not isinstance(value, list):
        raise BadRequest(f"field '{name}' must be a list of strings", {"field": name})
    if len(value) > MAX_LIST_ITEMS:
        raise TooLarge(f"field '{name}' has more than {MAX_LIST_ITEMS} items", {"field": name})
    out: list[str] = []
    for v in value:
        if not isinstance(v, str):
            raise BadRequest(f"field '{name}' must be a list of strings", {"field": name})
        item(name, v)
        if v not in out:
            out.append(v)
    return out


def _check_glob(name: str, value: Any) -> str:
    """A path pattern, in its canonical form (zmesh/protocol/globs.py says what one may be)."""
    if not isinstance(value, str):
        raise BadRequest(f"field '{name}' must be a path pattern (a string)", {"field": name})
    _check_utf8(name, _plain(name, value))
    try:
        return globs.normalize(value)
    except ValueError as exc:
        raise BadRequest(f"field '{name}': {escape_controls(str(exc))} (pattern {escape_controls(value[:80])!r})",
                         {"field": name}) from None


def _check_globs(name: str, value: Any) -> list[str]:
    if not isinstance(value, list):
        raise BadRequest(f"field '{name}' must be a list of path patterns", {"field": name})
    if len(value) > MAX_LIST_ITEMS:
        raise TooLarge(f"field '{name}' has more than {MAX_LIST_ITEMS} items", {"field": name})
    out: list[str] = []
    for v in value:
        pattern = _check_glob(name, v)
        if pattern not in out:
            out.append(pattern)
    return out


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"field '{name}' must be true or false", {"field": name})
    return value


def _check_status(name: str, value: Any) -> str:
    if value not in STATUSES:
        raise BadRequest(f"field '{name}' must be one of {', '.join(STATUSES)}", {"field": name})
    return value


def _check_topic(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _TOPIC_RE.fullmatch(value):
        raise BadRequest(f"field '{name}' must be 1..{MAX_TOPIC_CHARS} characters of "
                         "A-Z a-z 0-9 . _ -", {"field": name})
    return value


def _encoded(name: str, value: Any) -> bytes:
    """``value`` as JSON, or the refusal naming the field: a value orjson cannot encode (a
    set, an object, an int beyond 64 bits, a non-str key) or would not round-trip (orjson
    writes nan and infinity as null)."""
    try:
        raw = orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise BadRequest(f"field '{name}' is not JSON: {exc}", {"field": name}) from None
    if b"null" in raw and _has_nonfinite(value):
        raise BadRequest(f"field '{name}' holds NaN or infinity (JSON has neither)", {"field": name})
    return raw


def _check_json(name: str, value: Any) -> Any:
    """Any JSON value (from Python: see _encoded). Bodies from the wire are JSON already."""
    if not (isinstance(value, (str, bool)) or value is None):
        _encoded(name, value)
    return value


def _has_nonfinite(value: Any, depth: int = 0) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if depth > 256:  # orjson refuses deeper nesting already
        return False
    if isinstance(value, dict):
        return any(_has_nonfinite(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_nonfinite(v, depth + 1) for v in value)
    return False


def _payload_size(name: str, raw: bytes) -> None:
    if len(raw) > MAX_MESSAGE_DATA_BYTES:
        raise TooLarge(f"field '{name}' is {len(raw)} bytes encoded, above {MAX_MESSAGE_DATA_BYTES}",
                       {"field": name})


def _check_payload(name: str, value: Any) -> Any:
    _payload_size(name, _encoded(name, value))
    return value


def _wire_payload(name: str, value: Any) -> Any:
    _payload_size(name, orjson.dumps(value))  # JSON already: only its size to check
    return value


def _check_object(name: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise BadRequest(f"field '{name}' must be a JSON object", {"field": name})
    return _check_json(name, value)


KINDS = {
    "id": _check_id,
    "name": _check_name,
    "after": _check_after,
    "text": lambda n, v: _check_str(n, v, MAX_TEXT_CHARS),
    "int": _check_int,
    "ttl": _check_number,
    "number": _check_number,
    "choice": _check_str,
    "bool": _check_bool,
    "namelist": lambda n, v: _check_list(n, v, _check_name),
    "idlist": lambda n, v: _check_list(n, v, _check_id),
    "glob": _check_glob,
    "globlist": _check_globs,
    "status": _check_status,
    "object": _check_object,
    "json": _check_json,
    "topic": _check_topic,
    "payload": _check_payload,
}


#: on the wire, JSON values arrived as JSON: nothing to re-check (and no second encode)
WIRE_KINDS = dict(KINDS, json=lambda n, v: v,
                   object=lambda n, v: v if isinstance(v, dict) else _check_object(n, v),
                   payload=_wire_payload)


def number_text(value: float | None) -> str:
    """A limit as people write it: 604800, 0.1, 9007199254740992 (never 1.04858e+06)."""
    return str(int(value)) if value is not None and float(value).is_integer() else str(value)


def escape_controls(text: str) -> str:
    """``text`` with the CONTROL_CHARS shown as escapes (\\n, \\x1b, \\u2028): one line,
    safe on a terminal, for text output and messages that quote what users sent."""
    if not CONTROL_CHARS.search(text):
        return text
    return CONTROL_CHARS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def check_value(f: Field, value: Any, *, wire: bool = False) -> Any:
    """One field's value checked by its kind and range (the unit of validate)."""
    return _limits(f, (WIRE_KINDS if wire else KINDS)[f.kind](f.name, value))


def checker(f: Field, *, wire: bool = False) -> Callable[[str, Any], Any]:
    """``check_value`` for one field, resolved once: the kind's validator itself when the
    field has no choices or range (most fields), so a request pays one call per field."""
    kind = (WIRE_KINDS if wire else KINDS)[f.kind]
    if not f.choices and f.lo is None and f.hi is None:
        return kind
    return lambda name, value: _limits(f, kind(name, value))


def plan(fields: tuple[Field, ...], *, wire: bool) -> tuple[Step, ...]:
    """The op's fields as steps for protocol.validate; a mutable default is copied per body."""
    return tuple((f.name, f.required, f.default, isinstance(f.default, (list, dict)), checker(f, wire=wire))
                 for f in fields)


def _limits(f: Field, value: Any) -> Any:
    if f.choices and value not in f.choices:
        raise BadRequest(f"field '{f.name}' must be one of {', '.join(f.choices)}", {"field": f.name})
    if f.lo is not None and value < f.lo or f.hi is not None and value > f.hi:
        raise BadRequest(f"field '{f.name}' must be between {number_text(f.lo)} and {number_text(f.hi)}",
                         {"field": f.name, "min": f.lo, "max": f.hi})
    return value
