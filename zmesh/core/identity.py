"""Who may do what when security is on: agent identity bound to a client key, and roles.

Rules it keeps:

* The authenticated key and its role reach the core through the batch (``Batch.key`` and
  ``Batch.role``, set per request by the broker from the connection's ZAP User-Id), never
  through a request field: a client cannot claim a key or a role it did not prove.
* Roles (the allow-list directory a key is in, keys.ROLE_DIRS):

  - ``observer`` runs only :data:`READ_OPS`: ops that neither write nor act as an agent
    (status, lists, gets, replay, snapshot); it reads events like anyone admitted;
  - ``agent`` runs every op but the admin ones (``Op.admin``) and the operator ones
    (``Op.operator``: the audit query, which shows what every key did);
  - ``admin`` runs every op, the admin ones included.

  An observer runs the operator ops too: they only read.

  Anything else is refused (``forbidden``) before the handler runs, so it writes nothing.
* :data:`ACTORS` names, per op, the field that says which agent acts. A request naming an
  agent that belongs to another key is refused (``not_owner``) before its handler runs.
  :data:`NOT_ACTING` lists the ops whose ``agent`` field only filters or names a target; a
  test keeps the two tables covering every op with an agent field. An admin is bound by
  this too: it acts on other agents' claims through the admin ops, not as them.
* The key an agent belongs to is stored in its record (``key``), set when the agent is
  made (registered, or implicitly by its first act) under a key. A record made with
  security off has no key: any key may act as it until it registers again under one.
* Every refusal here is audited: the event ``audit.refused`` (op, role, key fingerprint,
  agent, code) is kept although the request wrote nothing else. A refused client cannot
  flood the event log with them: at most one per key per second is recorded, and the next
  one counts the ones left out (``suppressed``).
* With security off (``Batch.key`` is None) nothing here runs.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import Forbidden, NotOwner, RemoteError
from ..keys import fingerprint
from ..protocol import OPS
from .context import Batch
from .eventlog import EventLog

#: op -> the field naming the agent that acts
ACTORS: dict[str, str] = {
    "register": "agent", "heartbeat": "agent", "unregister": "agent", "claim": "agent", "claim_next": "agent",
    "complete": "agent", "fail": "agent", "release": "agent", "renew": "agent", "report": "agent",
    "publish": "agent", "blocker_raise": "agent", "blocker_resolve": "agent", "send": "from", "assign": "from",
    "ack": "agent", "mark_read": "agent", "group_join": "agent", "group_leave": "agent", "reserve": "agent",
    "release_paths": "agent",
}
#: ops with an agent field that does not act: a filter, or the target of an assignment or
#: of an admin op
NOT_ACTING = frozenset({"agent_get", "message_list", "unacked", "dead_letters", "requeue", "reservations",
                        "admin_release", "audit"})
#: what an observer may run: ops that neither change durable state nor act as an agent (and are
#: not admin ops: a backup writes nothing in the store, yet it is an admin's to ask)
READ_OPS = frozenset(name for name, op in OPS.items() if not op.writes and not op.admin and name not in ACTORS)
#: ops only an admin may run (security on)
ADMIN_OPS = frozenset(name for name, op in OPS.items() if op.admin)
#: ops observers and admins may run and agents may not (security on): they read what every key did
OPERATOR_OPS = frozenset(name for name, op in OPS.items() if op.operator)
assert OPERATOR_OPS <= READ_OPS, "an operator op must only read: observers run it"

#: seconds between two audit.refused events for one key
AUDIT_EVERY_S = 1.0


def may_run(role: str | None, op: str) -> bool:
    """May a connection of ``role`` run ``op``? (None: security off, everyone may.)"""
    if role is None or role == "admin":
        return True
    if role == "agent":
        return op not in ADMIN_OPS and op not in OPERATOR_OPS
    return role == "observer" and op in READ_OPS


class Identity:
    """The checks above, and the rate of their audit events."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        #: key -> (when its last audit.refused was recorded (monotonic), refusals not recorded since)
        self._audited: dict[str, tuple[float, int]] = {}

    def check(self, b: Batch, op: str, body: dict[str, Any],
              record_of: Callable[[str], dict[str, Any] | None]) -> None:
        """Refuse a request its role may not run, or that acts as an agent belonging to
        another key (``record_of(agent)`` is the agent's stored record or None)."""
        assert b.key is not None
        if not may_run(b.role, op):
            why = ("it is an admin op: only keys in the allow-list's admins/ directory run it" if op in ADMIN_OPS
                   else "it shows what every key did: only observer and admin keys run it" if op in OPERATOR_OPS
                   else "an observer only reads")
            self._refused(b, op, body, Forbidden(
                f"op '{op}' is not allowed for role {b.role} (key {fingerprint(b.key.encode())}): {why}",
                {"op": op, "role": b.role}))
        field = ACTORS.get(op)
        if field is None:
            return
        agent = body.get(field)
        if not agent:
            return
        record = record_of(agent)
        owner = None if record is None else record.get("key")
        if owner is not None and owner != b.key:
            self._refused(b, op, body, NotOwner(
                f"agent '{agent}' belongs to another key ({fingerprint(owner.encode())}); this "
                f"connection's key is {fingerprint(b.key.encode())}",
                {"agent": agent, "field": field, "reason": "key"}))

    def _refused(self, b: Batch, op: str, body: dict[str, Any], error: RemoteError) -> None:
        """Record the refusal (at most once a second per key) and raise it."""
        assert b.key is not None
        last, suppressed = self._audited.get(b.key, (None, 0))
        if last is not None and b.now.mono - last < AUDIT_EVERY_S:
            self._audited[b.key] = (last, suppressed + 1)
        else:
            self._audited[b.key] = (b.now.mono, 0)
            agent = body.get(ACTORS.get(op, "agent"))
            self.log.emit(b, "audit.refused", {"op": op, "role": b.role, "key": fingerprint(b.key.encode()),
                                               "agent": agent, "code": error.code, "suppressed": suppressed})
        raise error
