"""Agent identity bound to a client key (issue 17): with security on, an agent id belongs to
the CurveZMQ key that registered it, and no other key may act as that agent.

Rules it keeps:

* The authenticated key reaches the core through the batch (``Batch.key``, set per request
  by the broker from the connection's ZAP User-Id), never through a request field: a
  client cannot claim a key it did not prove.
* :data:`ACTORS` names, per op, the field that says which agent acts. A request naming an
  agent that belongs to another key is refused (``not_owner``) before its handler runs, so
  it writes nothing. :data:`NOT_ACTING` lists the ops whose ``agent`` field only filters or
  names a target; a test keeps the two tables covering every op with an agent field.
* The key an agent belongs to is stored in its record (``key``), set when the agent is
  made (registered, or implicitly by its first act) under a key. A record made with
  security off has no key: any key may act as it until it registers again under one.
* With security off (``Batch.key`` is None) nothing here runs.
"""

from __future__ import annotations

from typing import Any

from ..errors import NotOwner
from ..keys import fingerprint
from .context import Batch

#: op -> the field naming the agent that acts
ACTORS: dict[str, str] = {
    "register": "agent", "heartbeat": "agent", "unregister": "agent", "claim": "agent", "claim_next": "agent",
    "complete": "agent", "fail": "agent", "release": "agent", "renew": "agent", "report": "agent",
    "publish": "agent", "blocker_raise": "agent", "blocker_resolve": "agent", "send": "from", "assign": "from",
    "ack": "agent", "mark_read": "agent", "group_join": "agent", "group_leave": "agent", "reserve": "agent",
    "release_paths": "agent",
}
#: ops with an agent field that does not act: a filter, or the target of an assignment
NOT_ACTING = frozenset({"agent_get", "message_list", "unacked", "dead_letters", "requeue", "reservations"})


def check(b: Batch, op: str, body: dict[str, Any], record_of: Any) -> None:
    """Refuse a request that acts as an agent belonging to another key (``record_of(agent)``
    is the agent's stored record or None)."""
    field = ACTORS.get(op)
    if field is None or b.key is None:
        return
    agent = body.get(field)
    if not agent:
        return
    record = record_of(agent)
    owner = None if record is None else record.get("key")
    if owner is not None and owner != b.key:
        raise NotOwner(f"agent '{agent}' belongs to another key ({fingerprint(owner.encode())}); this "
                       f"connection's key is {fingerprint(b.key.encode())}",
                       {"agent": agent, "field": field, "reason": "key"})
