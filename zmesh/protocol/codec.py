"""Frames and codecs: requests, replies, pushes and events to bytes and back (orjson). Pure.

Rules it keeps:

* The frame layout is the package docstring's (zmesh/protocol/__init__.py); this module is
  its only writer and reader.
* A request that cannot be served is a :class:`DecodeError` carrying what is needed to
  answer it (the request id when one could be read, and the wire error), never a crash.
* A body is validated against the op table on decode (:func:`~zmesh.protocol.table.validate`
  with ``wire=True``), so the core only ever sees checked, defaulted bodies.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import orjson

from .. import errors
from ..errors import BadRequest, TooLarge, UnknownOp, UnsupportedVersion
from .fields import MAX_FRAMES, MAX_MESSAGE_BYTES, MAX_OP_BYTES, MAX_REQ_ID_BYTES
from .table import OPS, OPS_BY_WIRE as _OPS_BY_WIRE, validate

VERSION = b"ZM1"
PROTOCOL_VERSION = 1


OK = b"+"
ERROR = b"-"
PUSH = b"!"

_SEQ = struct.Struct(">Q")


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
