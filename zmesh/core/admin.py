"""The admin ops: force-release another agent's claim, purge tasks, requeue a dead task.

Rules it keeps:

* Who may run them is core/identity.py's business (``Op.admin``); this module only does
  them, and checks everything before it writes, so a refused request changes nothing.
* A forced release is an ordinary ending through the one claim machinery (claims.drop, or
  agents.end for a whole agent): the task goes back to the pool, its history records
  ``admin_released``, and the holder's next complete or renew is refused saying so.
* A task is never purged while it is claimed or while a task waits on it: a dependent
  would otherwise wait for ever on a task that no longer exists.
* Each op that changed something adds one ``audit.admin`` event (op, key fingerprint or
  None, what it touched) after the events of the changes themselves.
"""

from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING, Any, Callable

from ..errors import BadRequest, Conflict, NotFound
from ..protocol.identity import fingerprint
from ..protocol.states import TaskStatus
from .agents import Agents
from .claims import Claims
from .context import Batch
from .eventlog import EventLog, counter
from .schema import TASK, resource_key, status_key, waiting_key
from .tasks import Tasks

if TYPE_CHECKING:
    from ..store.base import Txn

Handler = Callable[[Batch, dict[str, Any]], Any]

#: how an admin release ends a claim (task history, task.released reason, endings.ENDED)
ADMIN_RELEASED = "admin_released"


def _one_of(body: dict[str, Any], *names: str) -> str:
    given = [name for name in names if body.get(name) is not None]
    if len(given) != 1:
        raise BadRequest(f"give exactly one of {' and '.join(repr(n) for n in names)}"
                         + (f" (got {', '.join(given)})" if given else ""), {"field": names[0]})
    return given[0]


class Admin:
    """The admin op handlers."""

    def __init__(self, log: EventLog, tasks: Tasks, agents: Agents, claims: Claims) -> None:
        self.log = log
        self.tasks = tasks
        self.agents = agents
        self.claims = claims

    def handlers(self) -> dict[str, Handler]:
        return {"admin_release": self.release, "admin_purge": self.purge, "admin_requeue": self.requeue,
                "backup": self.backup}

    def backup(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        """The core's part of a backup: the caller was checked (an admin op) and the copy
        holds at least every event up to this seq; the broker makes the copy (broker_jobs.py)."""
        return {"dest": body["dest"], "keys": body["keys"], "seq": counter(b, b"seq")}

    def _audit(self, b: Batch, op: str, **touched: Any) -> None:
        key = None if b.key is None else fingerprint(b.key.encode())
        self.log.emit(b, "audit.admin", {"op": op, "key": key, **touched})

    # ------------------------------------------------------------ release
    def release(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        which = _one_of(body, "task", "agent")
        reason = body["reason"]
        if which == "agent":
            agent = body["agent"]
            if self.agents.get(b.txn, agent) is None:
                raise NotFound(f"no agent '{agent}'", {"agent": agent})
            released = self.agents.end(b, agent, ADMIN_RELEASED)
            self._audit(b, "admin_release", agent=agent, released=released, reason=reason)
            return {"task": None, "agent": agent, "released": released}
        task = self.tasks.get(b.txn, body["task"])
        key = resource_key(TASK, task["id"])
        claim = self.claims.get(b.txn, key) if task["status"] == TaskStatus.CLAIMED else None
        if claim is None:
            raise Conflict(f"task '{task['id']}' is {task['status']}, not claimed: nothing to release",
                           {"task": task["id"], "status": task["status"]})
        self.claims.drop(b, key, claim, ADMIN_RELEASED)
        self._audit(b, "admin_release", task=task["id"], agent=claim["agent"], token=claim["token"],
                    reason=reason)
        return {"task": task["id"], "agent": claim["agent"], "released": [task["id"]]}

    # ------------------------------------------------------------ purge
    @staticmethod
    def _dependents(txn: Txn, task_id: str) -> list[str]:
        prefix = waiting_key(task_id)
        return [bytes(k[len(prefix):]).decode() for k, _ in txn.scan("waiting_on", prefix=prefix)]

    def _purgeable(self, txn: Txn, task: dict[str, Any]) -> str | None:
        """Why ``task`` may not be purged, or None."""
        if task["status"] == TaskStatus.CLAIMED:
            return "claimed: release it first (admin release)"
        waiting = self._dependents(txn, task["id"])
        if waiting:
            shown = ", ".join(waiting[:5]) + (f" and {len(waiting) - 5} more" if len(waiting) > 5 else "")
            return f"tasks wait on it: {shown}"
        return None

    def _delete(self, b: Batch, task: dict[str, Any]) -> None:
        self.tasks.delete(b, task)
        self.log.emit(b, "task.purged", {"task_id": task["id"], "old_status": task["status"],
                                         "new_status": None, "claimed_by": None})

    def purge(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        which = _one_of(body, "task", "status")
        txn = b.txn
        if which == "task":
            task = self.tasks.get(txn, body["task"])
            why = self._purgeable(txn, task)
            if why is not None:
                raise Conflict(f"task '{task['id']}' cannot be purged: {why}",
                               {"task": task["id"], "status": task["status"]})
            self._delete(b, task)
            self._audit(b, "admin_purge", tasks=[task["id"]])
            return {"purged": [task["id"]], "kept": [], "more": False}
        purged: list[str] = []
        kept: list[dict[str, str]] = []
        limit, more = body["limit"], False
        # the status index read first, no further than the caps can go (limit purged plus
        # limit kept, and one more to know whether more remain), then the deletes
        prefix = status_key(body["status"])
        ids = [bytes(k[len(prefix):]).decode() for k, _ in islice(txn.scan("by_status", prefix=prefix), 2 * limit + 1)]
        for task_id in ids:
            if len(purged) == limit or len(kept) == limit:  # bounded work per request
                more = True
                break
            task = self.tasks.get(txn, task_id)
            why = self._purgeable(txn, task)
            if why is None:
                self._delete(b, task)
                purged.append(task_id)
            else:
                kept.append({"task": task_id, "reason": why})
        if purged:
            self._audit(b, "admin_purge", status=body["status"], tasks=purged)
        return {"purged": purged, "kept": kept, "more": more}

    # ------------------------------------------------------------ requeue
    def requeue(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        task = self.tasks.get(b.txn, body["task"])
        if task["status"] != TaskStatus.DEAD:
            raise Conflict(f"task '{task['id']}' is {task['status']}, not dead: only a dead task is requeued",
                           {"task": task["id"], "status": task["status"]})
        old = self.tasks.transition(task, "requeue", TaskStatus.AVAILABLE)
        attempts, task["attempts"] = task["attempts"], 0
        self.tasks.history(task, {"ts": b.now.wall, "event": "requeued", "agent": None, "token": None,
                                  "attempts": attempts})
        self.tasks.save(b, task, old)
        self.tasks.event(b, "task.requeued", task, old, attempts=attempts)
        self._audit(b, "admin_requeue", task=task["id"], attempts=attempts)
        return self.tasks.view(b, task)
