"""Who may do what when security is on: agent identity bound to a client key, and roles.

Rules it keeps:

* The authenticated key and its role reach the core through the batch (``Batch.key`` and
  ``Batch.role``, set per request by the broker from the connection's ZAP User-Id), never
  through a request field: a client cannot claim a key or a role it did not prove.
* Roles (the allow-list directory a key is in, protocol/identity.py ROLE_DIRS):

  - ``observer`` runs only ``READ_OPS``: ops that neither write nor act as an agent
    (status, lists, gets, replay, snapshot); it reads events like anyone admitted;
  - ``agent`` runs every op but the admin ones (``Op.admin``) and the operator ones
    (``Op.operator``: the audit query, which shows what every key did);
  - ``admin`` runs every op, the admin ones included.

  An observer runs the operator ops too: they only read.

  Anything else is refused (``forbidden``) before the handler runs, so it writes nothing.
* ``ACTORS`` (protocol/identity.py) names, per op, the field that says which agent acts. A request naming an
  agent that belongs to another key is refused (``not_owner``) before its handler runs.
  ``NOT_ACTING`` lists the ops whose ``agent`` field only filters or names a target; a
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
# who may run what is the protocol's fact (docs/PROTOCOL.md renders it); enforced here
from ..protocol.identity import ACTORS, ADMIN_OPS, OPERATOR_OPS, fingerprint, may_run
from .context import Batch
from .eventlog import EventLog

#: seconds between two audit.refused events for one key
AUDIT_EVERY_S = 1.0


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
