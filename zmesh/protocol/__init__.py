"""The zmesh wire protocol: frames, version, op table, error codes and limits.

This package is the one source of truth for what travels on the wire; ``docs/PROTOCOL.md``
is generated from it (``zmesh/protocol/doc.py``, ``python docs/gen_protocol.py``) and a test
checks it is current. No zmq, no clock, no I/O: pure encode/decode/validate, so it is cheap
to fuzz. ``zmesh.protocol.X`` names every public name of its modules:

* fields.py: field kinds, their validators, every limit;
* ops/: the op table's entries, one module per resource (agents, tasks, presence, broker
  views, messages, reservations, admin, audit), and their event topics;
* table.py: the table assembled in order, the one validator, the topics;
* codec.py: the frames below, encoded and decoded;
* identity.py, globs.py, times.py: values the wire carries (key fingerprints and roles,
  path patterns, wall-clock times);
* records.py: the shape of every reply body (TypedDicts: Task, Agent, Blocker, ...) and
  ``REPLIES``, op -> reply type;
* doc.py: docs/PROTOCOL.md rendered from the table.

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

# re-exported: protocol.X is how the rest of zmesh names them
from .codec import (  # noqa: F401
    ERROR,
    OK,
    PROTOCOL_VERSION,
    PUSH,
    VERSION,
    DecodeError,
    Event,
    Push,
    Reply,
    Request,
    decode_event,
    decode_incoming,
    decode_reply,
    decode_request,
    encode_error,
    encode_event,
    encode_push,
    encode_reply,
    encode_request,
    prepare_request,
)
from .fields import (  # noqa: F401
    CONTROL_CHARS,
    KIND_RULES,
    KINDS,
    MAX_ATTEMPTS,
    MAX_COST,
    MAX_FRAME_BYTES,
    MAX_FRAMES,
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
    PRIORITIES,
    REPORTS,
    SEVERITIES,
    STATES,
    STATUSES,
    Field,
    Op,
    check_value,
    escape_controls,
    number_text,
)
from .ops.agents import EVASIVE_AFTER, HEARTBEAT_EVERY, LIVENESS  # noqa: F401
from .ops.broker import HEARTBEAT_TOPIC, PUB_HEARTBEAT_S  # noqa: F401
from .ops.presence import BLOCKER_STATUSES  # noqa: F401
from .records import *  # the reply shapes: records.__all__
from .table import OPS, TOPICS, WRITE_OPS, validate  # noqa: F401
