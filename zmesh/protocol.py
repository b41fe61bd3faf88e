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

Push (broker ROUTER -> one agent's DEALER, never over PUB), two frames::

    [0] header    b"ZM1" version, b"!"
    [1] body      orjson object: the message, with ``delivery`` {agent, token, attempt}

Event (broker PUB -> client SUB), three frames::

    [0] topic     ASCII, dotted ("task.claimed", "agent.expired"); SUB filters by prefix
    [1] seq       8-byte big-endian unsigned, global, gap-free, persisted
    [2] body      orjson object

Two frames, not one per field: every ZeroMQ frame costs each side a few microseconds of
Python, measured at ~22 us of client CPU per round trip for four frames against one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import errors
from .errors import BadRequest, TooLarge, UnknownOp, UnsupportedVersion
from .ops_admin import ADMIN_OPS, ADMIN_TOPICS
from .ops_audit import AUDIT, audit_op
from .ops_messages import MESSAGE_OPS, MESSAGE_TOPICS
from .ops_presence import BLOCKER_STATUSES, PRESENCE_OPS  # noqa: F401  (protocol.BLOCKER_STATUSES)
from .ops_reservations import RESERVATION_OPS, RESERVATION_TOPICS
# re-exported: protocol.X is how the rest of zmesh names them
from .fields import (  # noqa: F401
    CONTROL_CHARS,
    Field,
    KINDS,
    KIND_RULES,
    MAX_ATTEMPTS,
    MAX_COST,
    MAX_FRAMES,
    MAX_FRAME_BYTES,
    MAX_ID_BYTES,
    MAX_INT,
    MAX_LIST_ITEMS,
    MAX_LIST_LIMIT,
    MAX_MESSAGE_BYTES,
    MAX_MESSAGE_DATA_BYTES,
    MAX_NAME_CHARS,
    MAX_OP_BYTES,
    MAX_PRIORITY,
    MAX_REPLAY_LIMIT,
    MAX_REQ_ID_BYTES,
    MAX_TEXT_CHARS,
    MAX_TOPIC_CHARS,
    MAX_TTL_S,
    MAX_WAIT_S,
    MESSAGE_PREFIX,
    MIN_TTL_S,
    Op,
    PRIORITIES,
    REPORTS,
    SEVERITIES,
    STATES,
    STATUSES,
    check_value,
    escape_controls,
    number_text,
)

VERSION = b"ZM1"
PROTOCOL_VERSION = 1


OK = b"+"
ERROR = b"-"
PUSH = b"!"

_SEQ = struct.Struct(">Q")


# ---------------------------------------------------------------- op table


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
                Field("groups", "namelist", default=None, doc="groups to be a member of (messages "
                      "to a group reach its live members); re-registering without it keeps them"),
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
        *PRESENCE_OPS,
        Op(
            "snapshot",
            "Everything a coordinator or dashboard starts from, in one reply taken at one "
            "sequence number: every agent (as agent_list), the idle queue, the open blockers and "
            "the task counts. Applying the events after `seq` keeps it current: nothing is lost "
            "and nothing counted twice.",
            (),
            returns="{agents: [agent], idle_queue: [agent ids], blockers: [blocker], tasks: {status: n}, seq}",
        ),
        Op("agent_list", "Registered agents with presence, liveness, lease and stats, and the "
           "idle queue in arrival order.", (), returns="{agents: [agent], idle_queue: [agent ids], seq}"),
        Op("status", "Broker summary: task counts by status, agents by state and liveness, the "
           "idle queue, open blockers, sequence, durability.", (), returns="{...}"),
        Op("health", "Is the broker healthy? `healthy` is false, with one line per reason, when the LMDB map "
           "is nearly full, recent commits are slow or the data directory's disk is nearly full (the "
           "thresholds are in the answer). Also the broker's id, version, uptime, sequence, store size and "
           "map use, and the p95 of its recent commits. A read op with no agent: any role may ask.", (),
           returns="{healthy, reasons: [text], broker_id, version, uptime, seq, store_bytes, used_bytes, map_size, "
                   "map_use, commit_p95_ms, commits, disk_free_bytes, disk_size_bytes, disk_free_ratio, thresholds}"),
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
        *MESSAGE_OPS,
        *RESERVATION_OPS,
        *ADMIN_OPS,
    )
}

#: the audit query's `op` filter takes every op name (its own too): it is made from the table
OPS[AUDIT] = audit_op((*OPS, AUDIT))

#: op name as it comes on the wire (ASCII bytes) -> op
_OPS_BY_WIRE = {name.encode("ascii"): op for name, op in OPS.items()}

#: ops that change durable state: the broker commits (and syncs) before replying
WRITE_OPS = frozenset(name for name, op in OPS.items() if op.writes)




def validate(op: Op, body: Any, *, wire: bool = False) -> dict[str, Any]:
    """Check ``body`` against the op's fields; return it with defaults filled in.

    The broker validates what it decodes (``wire=True``); the clients validate what they
    are about to send, with the same rules, so bad input is refused before a round trip
    and from Python values JSON cannot carry (nan, sets, ints beyond 64 bits).
    Unknown fields are refused (a typo must not be silently ignored)."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    if not body.keys() <= op.by_name.keys():
        name = sorted(set(body) - op.by_name.keys())[0]
        raise BadRequest(f"unknown field '{name}' for op '{op.name}'", {"field": name})
    out: dict[str, Any] = {}
    get = body.get
    for name, required, default, copy, check in (op.wire_plan if wire else op.plan):
        value = get(name)
        if value is None:
            if required:
                raise BadRequest(f"missing field '{name}' for op '{op.name}'", {"field": name})
            out[name] = default.copy() if copy else default
        else:
            out[name] = check(name, value)
    return out


# ---------------------------------------------------------------- records and codecs
@dataclass(slots=True)
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
    """Parse and validate one request; raise DecodeError naming the problem.

    A well-formed request takes the short path (one header check, one dict lookup for the
    op); anything else goes through :func:`_refuse_request`, which says what is wrong."""
    if len(frames) == MAX_FRAMES:
        header, body_raw = frames
        if header[:3] == VERSION and len(header) > 3:
            end = 4 + header[3]
            op = _OPS_BY_WIRE.get(header[4:end])
            rid = header[end:]
            if op is not None and 0 < len(rid) <= MAX_REQ_ID_BYTES \
                    and len(header) + len(body_raw) <= MAX_MESSAGE_BYTES:
                try:
                    body = orjson.loads(body_raw) if body_raw else {}
                except orjson.JSONDecodeError as exc:
                    raise DecodeError(rid, BadRequest(f"body is not valid JSON: {exc}")) from None
                try:
                    return Request(rid, op.name, validate(op, body, wire=True))
                except errors.RemoteError as exc:
                    raise DecodeError(rid, exc) from None
    return _refuse_request(frames)


def _refuse_request(frames: list[bytes]) -> Request:
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


def encode_push(body_json: bytes) -> list[bytes]:
    return [VERSION + PUSH, body_json]


@dataclass(slots=True)
class Reply:
    req_id: bytes
    ok: bool
    body: Any


@dataclass(slots=True)
class Push:
    """A message the broker pushed to this client's connection (not a reply)."""

    body: dict[str, Any]


def decode_incoming(frames: list[bytes]) -> Reply | Push:
    """What arrived on a DEALER: a reply to some request, or a push."""
    if len(frames) != 2 or frames[0][:3] != VERSION or frames[0][3:4] not in (OK, ERROR, PUSH):
        raise errors.ProtocolError(f"malformed reply of {len(frames)} frames")
    try:
        body = orjson.loads(frames[1])
    except orjson.JSONDecodeError as exc:
        raise errors.ProtocolError(f"reply body is not JSON: {exc}") from None
    kind = frames[0][3:4]
    if kind == PUSH:
        if not isinstance(body, dict):
            raise errors.ProtocolError("push body is not a JSON object")
        return Push(body)
    return Reply(bytes(frames[0][4:]), kind == OK, body)


def decode_reply(frames: list[bytes]) -> Reply:
    incoming = decode_incoming(frames)
    if isinstance(incoming, Push):
        raise errors.ProtocolError("a push where a reply was expected")
    return incoming


@dataclass(slots=True)
class Event:
    """One state change as published and stored in the event log. Read-only by contract
    (not frozen: a frozen dataclass costs a setattr call per field, and one is made per
    event on the broker's hot path)."""

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

#: agents heartbeat every HEARTBEAT_EVERY of their lease TTL (the Python clients do)
HEARTBEAT_EVERY = 1 / 3
#: liveness: an agent silent for EVASIVE_AFTER of its TTL (one whole heartbeat period
#: missed) is `evasive`; silent for its whole TTL it is `gone` (the lease lapses)
EVASIVE_AFTER = 2 / 3
LIVENESS = ("alive", "evasive")

TOPICS: dict[str, str] = {
    "task.created": "a task was created (status waiting or available)",
    "task.available": "a waiting task's dependencies all completed",
    "task.claimed": "an agent claimed a task (claimed_by, token)",
    "task.completed": "the owner completed a task",
    "task.failed": "the owner failed a task; it is available again (or see task.dead)",
    "task.dead": "a task failed max_attempts times",
    "task.released": "a claim ended without completion: reason released, lease_expired, claim_expired, "
                     "unregistered or admin_released",
    "agent.registered": "an agent registered (or re-registered); state and position in the idle queue",
    "agent.unregistered": "an agent unregistered, or an admin ended its lease (reason admin_released)",
    "agent.expired": "an agent's lease lapsed; its claims were released (liveness `gone`)",
    "agent.idle": "an agent is idle: it reported so, or its last task claim ended (position in the idle queue)",
    "agent.busy": "an agent is busy: it reported so (task), or it claimed a task",
    "agent.blocked": "an agent reported itself blocked (reason), or raised a blocker",
    "agent.completed": "an agent completed a task (reported, or through complete): tasks done + 1, idle again unless it holds another task",
    "agent.help": "an agent asked for help (reason, helpers found)",
    "agent.evasive": "an agent missed a heartbeat period (silent for EVASIVE_AFTER of its TTL); its claims stand",
    "agent.alive": "an evasive agent was heard from again",
    "blocker.raised": "a blocker was raised, by an agent or by the broker (a task waits on a dead one)",
    "blocker.resolved": "a blocker was resolved",
    MESSAGE_PREFIX + "<topic>": "a message sent with `publish` (data, from)",
    **MESSAGE_TOPICS,
    **RESERVATION_TOPICS,
    **ADMIN_TOPICS,
}
