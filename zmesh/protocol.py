"""The zmesh wire protocol: frames, version, op table, error codes and limits.

This module is the one source of truth for what travels on the wire; ``docs/PROTOCOL.md``
is generated from it (``zmesh/protocol_doc.py``, ``python docs/gen_protocol.py``) and a test
checks it is current.
No zmq, no clock, no I/O: pure encode/decode/validate, so it is cheap to fuzz.

Request (client DEALER -> broker ROUTER), two frames::

    [0] header    b"ZM1"  version (3 bytes)
                  N       length of the op name (1 byte)
                  op      ASCII op name (N bytes), see OPS
                  req_id  the rest: 1..64 opaque bytes chosen by the client, unique per
                          request; a retry of the same request reuses it and gets the
                          original reply (idempotent retry)
    [1] body      orjson object (an empty frame means {})

Reply (broker -> client), two frames::

    [0] header    b"ZM1"  version
                  b"+" (ok) or b"-" (error)
                  req_id  echoed (empty when the request was too broken to read one)
    [1] body      orjson object; for errors {"code", "message", "details"?}

Event (broker PUB -> client SUB), three frames::

    [0] topic     ASCII, dotted ("task.claimed", "agent.expired"); SUB filters by prefix
    [1] seq       8-byte big-endian unsigned, global, gap-free, persisted
    [2] body      orjson object

Two frames, not one per field: every ZeroMQ frame costs each side a few microseconds of
Python, measured at ~22 us of client CPU per round trip for four frames against one.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import errors
from .errors import BadRequest, TooLarge, UnknownOp, UnsupportedVersion

VERSION = b"ZM1"
PROTOCOL_VERSION = 1

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

STATUSES = ("waiting", "available", "claimed", "completed", "dead")

#: what each field kind accepts (docs/PROTOCOL.md shows this table)
KIND_RULES = {
    "id": f"a string of 1..{MAX_ID_BYTES} bytes of UTF-8 without control characters "
          "(U+0000-U+001F, U+007F-U+009F, U+2028, U+2029)",
    "name": f"a string of 1..{MAX_NAME_CHARS} characters without control characters",
    "namelist": f"a list of up to {MAX_LIST_ITEMS} names (duplicates dropped)",
    "idlist": f"a list of up to {MAX_LIST_ITEMS} ids (duplicates dropped)",
    "after": "empty, or an id (a paging cursor)",
    "text": f"a string of up to {MAX_TEXT_CHARS} characters (any, newlines included)",
    "int": "an integer, within the field's range",
    "ttl": "a finite number of seconds, within the field's range",
    "status": "one of " + ", ".join(STATUSES),
    "object": "a JSON object",
    "json": "any JSON value",
    "topic": f"1..{MAX_TOPIC_CHARS} characters of A-Z a-z 0-9 . _ -",
    "payload": f"any JSON value, at most {MAX_MESSAGE_DATA_BYTES} bytes encoded",
}

OK = b"+"
ERROR = b"-"

_SEQ = struct.Struct(">Q")


# ---------------------------------------------------------------- op table
@dataclass(frozen=True)
class Field:
    """One body field. ``kind`` names a validator in _KINDS."""

    name: str
    kind: str
    required: bool = False
    default: Any = None
    doc: str = ""
    lo: float | None = None
    hi: float | None = None


@dataclass(frozen=True)
class Op:
    name: str
    doc: str
    fields: tuple[Field, ...] = ()
    #: True when the op may change durable state (its reply waits for the commit)
    writes: bool = False
    returns: str = ""
    errors: tuple[str, ...] = ()
    by_name: dict[str, Field] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.by_name.update({f.name: f for f in self.fields})


_AGENT = Field("agent", "id", True, doc="agent id")
_TASK = Field("task", "id", True, doc="task id")
_TOKEN = Field("token", "int", doc="fencing token of the claim; when given it must be current", lo=1, hi=MAX_INT)
_TTL = Field("ttl", "ttl", doc="seconds", lo=MIN_TTL_S, hi=MAX_TTL_S)

OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op(
            "hello",
            "Handshake: broker id, protocol version, PUB endpoint(s), durability.",
            returns="{broker_id, protocol, version, pub, endpoints, durability, seq}",
        ),
        Op(
            "register",
            "Register (or re-register) an agent and start its lease. Re-registering a live "
            "agent keeps its lease id and claims and updates capabilities and metadata.",
            (
                _AGENT,
                Field("capabilities", "namelist", default=[], doc="capability names"),
                Field("metadata", "object", default={}, doc="free JSON object"),
                Field("ttl", "ttl", default=None, doc="lease TTL in seconds (default: broker's)", lo=MIN_TTL_S, hi=MAX_TTL_S),
            ),
            writes=True,
            returns="{agent, lease, ttl}",
        ),
        Op(
            "heartbeat",
            "Renew the agent's lease. Refused with lease_expired when the lease lapsed or "
            "(when `lease` is given) was replaced. Costs no disk write.",
            (_AGENT, Field("lease", "int", doc="lease id from register", lo=1, hi=MAX_INT)),
            returns="{agent, lease, ttl}",
            errors=("lease_expired",),
        ),
        Op(
            "unregister",
            "End the agent's lease now: every claim it holds is released at once.",
            (_AGENT,),
            writes=True,
            returns="{agent, released: [task ids]}",
            errors=("not_found",),
        ),
        Op(
            "task_create",
            "Create a task. It is `waiting` while any dependency is not completed, else `available`.",
            (
                Field("id", "id", True, doc="task id"),
                Field("type", "name", default="task", doc="free task type"),
                Field("data", "json", default=None, doc="any JSON value"),
                Field("priority", "int", default=0, doc="higher is claimed first", lo=-MAX_PRIORITY, hi=MAX_PRIORITY),
                Field("requires", "namelist", default=[], doc="capabilities an agent needs for claim_next"),
                Field("max_attempts", "int", default=3, doc="failures before the task is dead", lo=1, hi=MAX_ATTEMPTS),
                Field("depends_on", "idlist", default=[], doc="task ids that must complete first"),
            ),
            writes=True,
            returns="task",
            errors=("conflict",),
        ),
        Op(
            "claim",
            "Claim a task by id. Exactly one of any number of racers wins. An agent with no "
            "lease gets one (TTL `ttl` or the broker default). Re-claiming a task one already "
            "holds returns the same claim.",
            (_TASK, _AGENT, Field("ttl", "ttl", doc="claim TTL in seconds; without it the claim lives as long as the agent's lease", lo=MIN_TTL_S, hi=MAX_TTL_S)),
            writes=True,
            returns="{task, agent, token, lease, expires_in}",
            errors=("not_found", "conflict"),
        ),
        Op(
            "claim_next",
            "Claim the best available task whose `requires` the agent's capabilities cover "
            "(highest priority, then oldest). Returns null when there is none.",
            (
                _AGENT,
                Field("capabilities", "namelist", default=None, doc="defaults to the registered capabilities"),
                _TTL,
            ),
            writes=True,
            returns="{task, agent, token, lease, expires_in} | null",
        ),
        Op(
            "complete",
            "Complete a claimed task (owner and current token only); the result is stored "
            "and tasks waiting on it become available.",
            (_TASK, _AGENT, _TOKEN, Field("result", "json", default=None, doc="any JSON value")),
            writes=True,
            returns="task",
            errors=("not_found", "not_owner", "stale_token", "lease_expired", "claim_expired"),
        ),
        Op(
            "fail",
            "Record a failed attempt. The task returns to `available`, or becomes `dead` "
            "after max_attempts failures.",
            (_TASK, _AGENT, _TOKEN, Field("error", "text", True, doc="what went wrong")),
            writes=True,
            returns="task",
            errors=("not_found", "not_owner", "stale_token", "lease_expired", "claim_expired"),
        ),
        Op(
            "release",
            "Give a claimed task back: it becomes `available` again (no attempt counted).",
            (_TASK, _AGENT, _TOKEN),
            writes=True,
            returns="task",
            errors=("not_found", "not_owner", "stale_token", "lease_expired", "claim_expired"),
        ),
        Op(
            "renew",
            "Extend a claim during long work (progress) and renew the agent's lease (for at "
            "least `ttl` when given, as a claim with a ttl does, so the lease does not cut the "
            "claim short).",
            (_TASK, _AGENT, _TOKEN, _TTL),
            returns="{task, agent, token, lease, expires_in}",
            errors=("not_found", "not_owner", "stale_token", "lease_expired", "claim_expired"),
        ),
        Op(
            "publish",
            "Broadcast a message to every subscriber. It becomes the event `msg.<topic>` "
            "(body: data, from, ts) with the next seq: kept in the event log, so a subscriber "
            "that was away replays it, and published after the commit. Subscribers filter by "
            "topic prefix.",
            (
                Field("topic", "topic", True, doc=f"dotted name of [A-Za-z0-9._-], up to {MAX_TOPIC_CHARS} characters"),
                Field("data", "payload", default=None, doc=f"any JSON value, up to {MAX_MESSAGE_DATA_BYTES} bytes encoded"),
                Field("agent", "id", doc="sender, shown to subscribers as `from`"),
            ),
            writes=True,
            returns="{topic, seq}",
            errors=("too_large",),
        ),
        Op("task_get", "One task with its claim.", (_TASK,), returns="task", errors=("not_found",)),
        Op(
            "task_list",
            "Tasks in id order, optionally of one status; `after` (the last id of the previous "
            "page) pages. Available tasks are listed in claim order (priority, then age).",
            (
                Field("status", "status", doc="one of " + ", ".join(STATUSES)),
                Field("after", "after", default="", doc="the last id of the previous page (empty: from the start)"),
                Field("limit", "int", default=1000, lo=1, hi=MAX_LIST_LIMIT),
            ),
            returns="{tasks: [task], seq, more}",
        ),
        Op("agent_list", "Registered agents with lease state and stats.", (), returns="{agents: [agent], seq}"),
        Op("status", "Broker summary: task counts by status, agents, sequence, durability.", (), returns="{...}"),
        Op(
            "replay",
            "Events with seq > since, oldest first (the bounded event log). Refused with "
            "snapshot_required when some of them were trimmed, and with bad_request (details: "
            "field `since`, `last_seq`) when `since` is ahead of the broker's last event: a "
            "subscriber that followed another or a restored broker starts again from `last_seq`.",
            (
                Field("since", "int", True, doc="last seq the subscriber has", lo=0, hi=MAX_INT),
                Field("limit", "int", default=1000, lo=1, hi=MAX_REPLAY_LIMIT),
                Field("topics", "namelist", default=[], doc="topic prefixes; empty means all"),
            ),
            returns="{events: [{topic, seq, body}], last_seq, more}",
            errors=("snapshot_required", "bad_request"),
        ),
    )
}

#: ops that change durable state: the broker commits (and syncs) before replying
WRITE_OPS = frozenset(name for name, op in OPS.items() if op.writes)


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


def _check_list(name: str, value: Any, item) -> list[str]:
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


_KINDS = {
    "id": _check_id,
    "name": _check_name,
    "after": _check_after,
    "text": lambda n, v: _check_str(n, v, MAX_TEXT_CHARS),
    "int": _check_int,
    "ttl": _check_number,
    "namelist": lambda n, v: _check_list(n, v, _check_name),
    "idlist": lambda n, v: _check_list(n, v, _check_id),
    "status": _check_status,
    "object": _check_object,
    "json": _check_json,
    "topic": _check_topic,
    "payload": _check_payload,
}


#: on the wire, JSON values arrived as JSON: nothing to re-check (and no second encode)
_WIRE_KINDS = dict(_KINDS, json=lambda n, v: v,
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
    value = (_WIRE_KINDS if wire else _KINDS)[f.kind](f.name, value)
    if f.lo is not None and value < f.lo or f.hi is not None and value > f.hi:
        raise BadRequest(f"field '{f.name}' must be between {number_text(f.lo)} and {number_text(f.hi)}",
                         {"field": f.name, "min": f.lo, "max": f.hi})
    return value


def validate(op: Op, body: Any, *, wire: bool = False) -> dict[str, Any]:
    """Check ``body`` against the op's fields; return it with defaults filled in.

    The broker validates what it decodes (``wire=True``); the clients validate what they
    are about to send, with the same rules, so bad input is refused before a round trip
    and from Python values JSON cannot carry (nan, sets, ints beyond 64 bits).
    Unknown fields are refused (a typo must not be silently ignored)."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    extra = set(body) - op.by_name.keys()
    if extra:
        name = sorted(extra)[0]
        raise BadRequest(f"unknown field '{name}' for op '{op.name}'", {"field": name})
    out: dict[str, Any] = {}
    for f in op.fields:
        if f.name not in body or body[f.name] is None:
            if f.required:
                raise BadRequest(f"missing field '{f.name}' for op '{op.name}'", {"field": f.name})
            out[f.name] = list(f.default) if isinstance(f.default, list) else (
                dict(f.default) if isinstance(f.default, dict) else f.default)
            continue
        out[f.name] = check_value(f, body[f.name], wire=wire)
    return out


# ---------------------------------------------------------------- records and codecs
@dataclass(frozen=True)
class Request:
    req_id: bytes
    op: str
    body: dict[str, Any]


class DecodeError(Exception):
    """A request that cannot be served; carries what is needed to answer it."""

    def __init__(self, req_id: bytes, error: errors.RemoteError) -> None:
        super().__init__(str(error))
        self.req_id = req_id
        self.error = error


def encode_request(req_id: bytes, op: str, body: dict[str, Any] | None = None) -> list[bytes]:
    name = op.encode("ascii")
    return [VERSION + bytes((len(name),)) + name + req_id, orjson.dumps(body or {})]


def prepare_request(req_id: bytes, op: str, body: dict[str, Any]) -> list[bytes]:
    """A client's request, checked as the broker will check it: unknown op, bad fields and
    a message above MAX_MESSAGE_BYTES are refused here, at once, with the broker's codes."""
    spec = OPS.get(op)
    if spec is None:
        raise UnknownOp(f"unknown op '{op}'", {"op": op})
    validate(spec, body)
    frames = encode_request(req_id, op, body)
    size = len(frames[0]) + len(frames[1])
    if size > MAX_MESSAGE_BYTES:
        raise TooLarge(f"request of {size} bytes is above the limit of {MAX_MESSAGE_BYTES} bytes "
                       f"(op {op})", {"op": op, "size": size, "limit": MAX_MESSAGE_BYTES})
    return frames


def _split_request_header(header: bytes) -> tuple[bytes, bytes, bytes]:
    """(version, op, req_id) of a request header, as far as it can be read."""
    version = header[:3]
    op_len = header[3] if len(header) > 3 else 0
    return version, header[4:4 + op_len], header[4 + op_len:]


def decode_request(frames: list[bytes]) -> Request:
    """Parse and validate one request; raise DecodeError naming the problem."""
    size = sum(len(f) for f in frames)
    version, op_raw, rid = _split_request_header(frames[0]) if frames else (b"", b"", b"")
    req_id = rid if 0 < len(rid) <= MAX_REQ_ID_BYTES else b""
    if size > MAX_MESSAGE_BYTES:
        raise DecodeError(req_id, TooLarge(f"message of {size} bytes is above {MAX_MESSAGE_BYTES}"))
    if len(frames) != MAX_FRAMES:
        raise DecodeError(req_id, BadRequest(f"expected 2 frames (header, body), got {len(frames)}"))
    if version != VERSION:
        raise DecodeError(req_id, UnsupportedVersion(
            f"protocol version {bytes(version)!r} is not supported; this broker speaks {VERSION.decode()}"))
    if len(frames[0]) < 4 or len(frames[0]) < 4 + frames[0][3]:
        raise DecodeError(b"", BadRequest("header is shorter than its op length says"))
    if not rid or len(rid) > MAX_REQ_ID_BYTES:
        raise DecodeError(b"", BadRequest(f"req_id must have 1..{MAX_REQ_ID_BYTES} bytes"))
    try:
        op_name = op_raw.decode("ascii") if len(op_raw) <= MAX_OP_BYTES else ""
    except UnicodeDecodeError:
        op_name = ""
    op = OPS.get(op_name)
    if op is None:
        shown = op_raw[:MAX_OP_BYTES].decode("ascii", "replace")
        raise DecodeError(rid, UnknownOp(f"unknown op '{shown}'", {"op": shown}))
    body_raw = frames[1]
    try:
        body = orjson.loads(body_raw) if body_raw else {}
    except orjson.JSONDecodeError as exc:
        raise DecodeError(rid, BadRequest(f"body is not valid JSON: {exc}")) from None
    try:
        return Request(rid, op_name, validate(op, body, wire=True))
    except errors.RemoteError as exc:
        raise DecodeError(rid, exc) from None


def encode_reply(req_id: bytes, body: Any) -> list[bytes]:
    return [VERSION + OK + req_id, orjson.dumps(body)]


def encode_error(req_id: bytes, error: errors.ZmeshError) -> list[bytes]:
    return [VERSION + ERROR + req_id, orjson.dumps(error.to_wire())]


@dataclass(frozen=True)
class Reply:
    req_id: bytes
    ok: bool
    body: Any


def decode_reply(frames: list[bytes]) -> Reply:
    if len(frames) != 2 or frames[0][:3] != VERSION or frames[0][3:4] not in (OK, ERROR):
        raise errors.ProtocolError(f"malformed reply of {len(frames)} frames")
    try:
        body = orjson.loads(frames[1])
    except orjson.JSONDecodeError as exc:
        raise errors.ProtocolError(f"reply body is not JSON: {exc}") from None
    return Reply(bytes(frames[0][4:]), frames[0][3:4] == OK, body)


@dataclass(frozen=True)
class Event:
    """One state change as published and stored in the event log."""

    topic: str
    seq: int
    body: dict[str, Any]
    #: the body already encoded (by the core, for the log), so PUB does not encode it again
    raw: bytes | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "seq": self.seq, "body": self.body}


def encode_event(event: Event) -> list[bytes]:
    return [event.topic.encode("ascii"), _SEQ.pack(event.seq),
            event.raw if event.raw is not None else orjson.dumps(event.body)]


def decode_event(frames: list[bytes]) -> Event:
    if len(frames) != 3 or len(frames[1]) != 8:
        raise errors.ProtocolError(f"malformed event of {len(frames)} frames")
    return Event(frames[0].decode("ascii", "replace"), _SEQ.unpack(frames[1])[0], orjson.loads(frames[2]))


# ---------------------------------------------------------------- docs
#: published every PUB_HEARTBEAT_S with the latest seq (not logged, not a state change):
#: a subscriber that is behind it replays, so a lost last event is noticed within a second
HEARTBEAT_TOPIC = "$hb"
PUB_HEARTBEAT_S = 1.0

TOPICS: dict[str, str] = {
    "task.created": "a task was created (status waiting or available)",
    "task.available": "a waiting task's dependencies all completed",
    "task.claimed": "an agent claimed a task (claimed_by, token)",
    "task.completed": "the owner completed a task",
    "task.failed": "the owner failed a task; it is available again (or see task.dead)",
    "task.dead": "a task failed max_attempts times",
    "task.released": "a claim ended without completion: reason released, lease_expired, claim_expired or unregistered",
    "agent.registered": "an agent registered (or re-registered)",
    "agent.unregistered": "an agent unregistered",
    "agent.expired": "an agent's lease lapsed; its claims were released",
    MESSAGE_PREFIX + "<topic>": "a message sent with `publish` (data, from)",
}
