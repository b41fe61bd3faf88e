"""The op table: every op, its fields and errors, every event topic; the one validator.

Rules it keeps:

* One table, assembled here in its documented order from the op modules of each resource
  (ops/agents.py, ops/tasks.py, ops/presence.py, ops/broker.py, ops/messages.py,
  ops/reservations.py, ops/admin.py, ops/audit.py). The broker validates with it, the
  clients check arguments with it, the CLI and the MCP/HTTP schemas are built from it and
  docs/PROTOCOL.md is generated from it (protocol/doc.py).
* :func:`validate` is the one check of a body: the broker's (``wire=True``) and a client's
  before it sends (the same rules, so bad input is refused before a round trip). Unknown
  fields are refused: a typo must not be silently ignored.
"""

from __future__ import annotations

from typing import Any

from ..errors import BadRequest
from .fields import MESSAGE_PREFIX, Op
from .ops.admin import ADMIN_OPS, ADMIN_TOPICS
from .ops.agents import AGENT_OPS, AGENT_TOPICS
from .ops.audit import AUDIT, audit_op
from .ops.broker import HELLO, PUBLISH, VIEW_OPS
from .ops.messages import MESSAGE_OPS, MESSAGE_TOPICS
from .ops.presence import BLOCKER_TOPICS, PRESENCE_OPS
from .ops.reservations import RESERVATION_OPS, RESERVATION_TOPICS
from .ops.tasks import TASK_OPS, TASK_READ_OPS, TASK_TOPICS

OPS: dict[str, Op] = {
    op.name: op
    for op in (HELLO, *AGENT_OPS, *TASK_OPS, PUBLISH, *TASK_READ_OPS, *PRESENCE_OPS, *VIEW_OPS,
               *MESSAGE_OPS, *RESERVATION_OPS, *ADMIN_OPS)
}

#: the audit query's `op` filter takes every op name (its own too): it is made from the table
OPS[AUDIT] = audit_op((*OPS, AUDIT))

#: op name as it comes on the wire (ASCII bytes) -> op
OPS_BY_WIRE = {name.encode("ascii"): op for name, op in OPS.items()}

#: ops that change durable state: the broker commits (and syncs) before replying
WRITE_OPS = frozenset(name for name, op in OPS.items() if op.writes)

TOPICS: dict[str, str] = {
    **TASK_TOPICS,
    **AGENT_TOPICS,
    **BLOCKER_TOPICS,
    MESSAGE_PREFIX + "<topic>": "a message sent with `publish` (data, from)",
    **MESSAGE_TOPICS,
    **RESERVATION_TOPICS,
    **ADMIN_TOPICS,
}


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
