"""Who a request comes from, as the wire and the log name it: key fingerprints, ZAP user ids,
roles. Pure (no zmq): the core reads these, the broker's gate (zmesh/broker/zap.py) writes them.

Rules it keeps:

* A key is shown by its fingerprint: the first 16 hex digits of the SHA-256 of its Z85 public
  key. Logs, refusals, audit records and discovery records use it, never the key itself.
* An admitted connection's ZAP User-Id is ``ROLE:KEY`` (its role and its Z85 key); a Z85 key
  may hold ``:``, a role never does, so the first ``:`` splits them.
* The roles, lowest first: ``observer``, ``agent``, ``admin``; a key's role is the
  allow-list directory it is in (:data:`ROLE_DIRS`). What each may run is stated here, from
  the op table (:func:`may_run`), and enforced by zmesh/core/identity.py; which key has which
  role is the allow-list's (zmesh/transport/keys.py).
"""

from __future__ import annotations

import hashlib

from .table import OPS

#: a public key in Z85 text
Z85_KEY_CHARS = 40
#: the roles a key may be given, lowest first
ROLES = ("observer", "agent", "admin")
#: role -> its directory inside the allow-list directory ("" is the directory itself)
ROLE_DIRS: dict[str, str] = dict(zip(ROLES, ("observers", "", "admins")))

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
                        "admin_release", "audit", "task_next"})
#: what an observer may run: ops that neither change durable state nor act as an agent (and are
#: not admin ops: a backup writes nothing in the store, yet it is an admin's to ask)
READ_OPS = frozenset(name for name, op in OPS.items() if not op.writes and not op.admin and name not in ACTORS)
#: ops only an admin may run (security on)
ADMIN_OPS = frozenset(name for name, op in OPS.items() if op.admin)
#: ops observers and admins may run and agents may not (security on): they read what every key did
OPERATOR_OPS = frozenset(name for name, op in OPS.items() if op.operator)
assert OPERATOR_OPS <= READ_OPS, "an operator op must only read: observers run it"


def fingerprint(public: bytes) -> str:
    """The first 16 hex digits of the SHA-256 of a Z85 public key."""
    return hashlib.sha256(public).hexdigest()[:16]


def user_id(role: str, key: str) -> str:
    """The ZAP User-Id of an admitted connection: its role and its Z85 key."""
    return f"{role}:{key}"


def split_user_id(value: str) -> tuple[str, str]:
    """(role, key) from a ZAP User-Id made by :func:`user_id`."""
    role, _, key = value.partition(":")
    return role, key


def may_run(role: str | None, op: str) -> bool:
    """May a connection of ``role`` run ``op``? (None: security off, everyone may.)"""
    if role is None or role == "admin":
        return True
    if role == "agent":
        return op not in ADMIN_OPS and op not in OPERATOR_OPS
    return role == "observer" and op in READ_OPS
