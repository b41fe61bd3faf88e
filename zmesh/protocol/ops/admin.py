"""The admin ops of the wire protocol (protocol.OPS includes them) and their topics.

Rules it keeps:

* Every op here is ``admin=True``: with security on, only a connection whose key is in
  the admins directory may run it (core/identity.py refuses the rest with ``forbidden``
  and an audit event). With security off every client may, as with every other op: a
  broker without keys trusts its network.
* An admin op acts on another agent's claims or on tasks regardless of who holds them,
  through the same claim machinery the agents use (core/admin.py): a force-released claim
  ends like any other (its holder's next complete is refused, naming how it ended).
* Each one that changed something is recorded as the event ``audit.admin`` (op, key,
  what it touched), beside the task and agent events it caused.
"""

from __future__ import annotations

from ..fields import MAX_LIST_LIMIT, Field, Op

#: statuses a bulk purge may take (a claimed task is released first; available and
#: waiting tasks are purged one by one, by id)
PURGE_STATUSES = ("completed", "dead")

ADMIN_OPS: tuple[Op, ...] = (
    Op(
        "admin_release",
        "Force-release a claim held by another agent: one task's claim (`task`: the task is "
        "available again), or every claim and reservation of an agent (`agent`: its lease ends "
        "as if it unregistered). Exactly one of the two.",
        (
            Field("task", "id", doc="the claimed task to release"),
            Field("agent", "id", doc="the agent whose lease (and so every claim) ends"),
            Field("reason", "text", default="", doc="why: kept in the task history and the audit event"),
        ),
        writes=True,
        returns="{task, agent, released: [resources]}",
        errors=("not_found", "conflict", "forbidden"),
        admin=True,
    ),
    Op(
        "admin_purge",
        "Delete tasks: one by id (`task`; any status but claimed, and not while tasks wait on "
        "it), or up to `limit` of a status (`status`: " + ", ".join(PURGE_STATUSES) + "; a dead "
        "task that tasks wait on is kept and named). Exactly one of `task` and `status`.",
        (
            Field("task", "id", doc="the task to delete"),
            Field("status", "choice", doc="delete tasks of this status: " + ", ".join(PURGE_STATUSES),
                  choices=PURGE_STATUSES),
            Field("limit", "int", default=1000, lo=1, hi=MAX_LIST_LIMIT, doc="at most this many (with `status`)"),
        ),
        writes=True,
        returns="{purged: [task ids], kept: [{task, reason}], more}",
        errors=("not_found", "conflict", "forbidden"),
        admin=True,
    ),
    Op(
        "admin_requeue",
        "Put a dead task back in the pool: `available` again with its attempts at zero (its "
        "history keeps the failures). Tasks that waited on it wake when it completes.",
        (Field("task", "id", True, doc="the dead task"),),
        writes=True,
        returns="task",
        errors=("not_found", "conflict", "forbidden"),
        admin=True,
    ),
    Op(
        "backup",
        "A consistent, compacted copy of the broker's data (LMDB's copy) taken while it serves, "
        "into `dest` on the broker's host: an absolute path that does not exist yet or is an empty "
        "directory. Every write acknowledged before the request is in it. The answer comes when the "
        "copy is done; one backup at a time. A new broker started on a directory holding the copy "
        "(`zmesh restore`) has every task and claim it holds.",
        (Field("dest", "text", True, doc="absolute path of a new or empty directory on the broker's host"),
         Field("keys", "bool", default=True, doc="also copy the broker's key pair and the public keys its "
               "allow-list admits, into DEST/keys (a client's secret is never copied)")),
        returns="{dest, bytes, seconds, broker_id, seq, keys: {broker_key, authorized} or null}",
        errors=("bad_request", "conflict", "forbidden", "internal"),
        admin=True,
    ),
)

ADMIN_TOPICS: dict[str, str] = {
    "task.purged": "an admin deleted a task (task_id, old_status)",
    "task.requeued": "an admin put a dead task back in the pool (attempts reset)",
    "audit.admin": "an admin op changed something: op, key (fingerprint; null with security off), what it touched",
    "audit.refused": "a request was refused for its key or role (forbidden, not_owner): op, role, key, agent; "
                     "at most one per key per second, `suppressed` counts the ones not recorded",
}
