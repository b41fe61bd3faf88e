"""Tasks: their records, indexes and status counters, and the task ops.

Task states (protocol.TaskStatus) and the only transitions between them (the table is
:data:`TRANSITIONS`)::

    waiting ──(last dependency completed)──> available
    available ──claim / claim_next──> claimed
    claimed ──complete (owner, current token)──> completed
    claimed ──fail──> available            (attempts < max_attempts)
    claimed ──fail──> dead                 (attempts == max_attempts)
    claimed ──release / lease or claim expiry / unregister / admin release──> available
    dead ──admin requeue──> available      (attempts back to 0)

Rules it keeps:

* A task's claim is a claim of kind ``task`` (:class:`TaskKind`), stored right after the
  task record (schema.task_claim_key): a claim dirties the task's leaf page and no other
  tree. Everything about holding it (token, lease, TTL, expiry) is claims.Claims'.
* Every write of a task goes through :meth:`Tasks.save`, which keeps the status index,
  the ready index and the status counters in step with the record.
* complete / fail / release / renew need the owner and, when given, the current token;
  otherwise endings.refusal says precisely why not. Every ending is recorded in the
  task's history (at most :data:`HISTORY_LIMIT` entries) so it can.
* Handlers check everything before they write, so a refused request changes nothing.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .. import protocol
from ..errors import Conflict, LeaseExpired, NotFound, RemoteError
from ..protocol.states import TaskStatus
from .agents import Agents
from .blockers import Blockers
from .claims import ClaimKind, Claims
from .context import Batch
from .endings import refusal
from .presence import Presence
from .eventlog import EventLog, bump, counter, set_counter
from .schema import (
    READY_ID_AT,
    TASK,
    TASK_CLAIM_SUFFIX,
    dumps,
    is_task_claim_key,
    loads,
    ready_key,
    resource_key,
    status_key,
    task_claim_key,
    task_key,
    waiting_key,
)

if TYPE_CHECKING:
    from ..store.base import Txn

Handler = Callable[[Batch, dict[str, Any]], Any]

# the statuses bound once: the claim path compares them several times per request, and a
# member looked up on its class costs more than a literal (protocol/states.py)
WAITING, AVAILABLE, CLAIMED = TaskStatus.WAITING, TaskStatus.AVAILABLE, TaskStatus.CLAIMED
COMPLETED, DEAD = TaskStatus.COMPLETED, TaskStatus.DEAD

TRANSITIONS: dict[tuple[str, str], tuple[str, ...]] = {
    (WAITING, "dependencies_done"): (AVAILABLE,),
    (AVAILABLE, "claim"): (CLAIMED,),
    (CLAIMED, "complete"): (COMPLETED,),
    (CLAIMED, "fail"): (AVAILABLE, DEAD),
    (CLAIMED, "release"): (AVAILABLE,),
    (DEAD, "requeue"): (AVAILABLE,),
}

#: entries kept in a task's history (how each claim that did not complete ended: released,
#: failed, lease_expired, claim_expired, unregistered); older ones are dropped
HISTORY_LIMIT = 50

#: statuses with an index of their own; available tasks are listed from the ready index
#: and claimed ones from the claim index, so a claim updates two trees less
BY_STATUS = (WAITING, COMPLETED, DEAD)
#: statuses that take a task out of the ready index for good
_DONE = (COMPLETED, DEAD)


class TaskKind(ClaimKind):
    """Claims on tasks: stored beside the task; ending one puts the task back in the pool."""

    prefix = TASK
    busy = True
    _NAME_AT = len(TASK) + 1  # where the task id starts in a resource key

    def __init__(self, tasks: Tasks) -> None:
        self.tasks = tasks

    def slot(self, key: bytes) -> tuple[str, bytes]:
        return "tasks", key[self._NAME_AT:] + TASK_CLAIM_SUFFIX

    def records(self, txn: Txn) -> Iterator[tuple[bytes, bytes]]:
        for key, raw in txn.scan("tasks"):
            if is_task_claim_key(key):
                yield TASK + b":" + bytes(key[:-1]), raw

    def conflict(self, b: Batch, key: bytes, agent: str, request: dict[str, Any]) -> RemoteError | None:
        """Decided by the task record the claim op read (``request["task"]``): only an
        available task can be claimed; a claimed one names its holder (its claim record
        is read only then)."""
        task = request["task"]
        status = task["status"]
        if status == AVAILABLE:
            return None
        task_id = task["id"]
        if status == CLAIMED:
            raw = b.txn.get(*self.slot(key))
            holder = None if raw is None else loads(raw)["agent"]
            return Conflict(f"task '{task_id}' is held by '{holder}'",
                            {"task": task_id, "status": CLAIMED, "holder": holder})
        return Conflict(f"task '{task_id}' is {status}, not available", {"task": task_id, "status": status})

    def ended(self, b: Batch, key: bytes, claim: dict[str, Any], reason: str) -> None:
        tasks = self.tasks
        task = tasks.get(b.txn, self.show(key))
        old = tasks.transition(task, "release", AVAILABLE)
        # every ending is recorded (the owner's own release too), so a refusal of a later
        # request with this token can say how the claim ended (endings.refusal)
        tasks.history(task, {"ts": b.now.wall, "event": reason, "agent": claim["agent"],
                             "token": claim["token"]})
        tasks.save(b, task, old)
        tasks.event(b, "task.released", task, old, agent=claim["agent"], token=claim["token"],
                    reason=reason)
        if reason not in ("lease_expired", "unregistered"):  # the agent lives on: idle again?
            record = tasks.agents.get(b.txn, claim["agent"])
            if record is not None and tasks.presence.finished(b, record, task["id"], completed=False):
                tasks.agents.put(b, record)

    def show(self, key: bytes) -> str:
        return key[self._NAME_AT:].decode()


class Tasks:
    """The task tables and ops."""

    def __init__(self, log: EventLog, claims: Claims, agents: Agents, presence: Presence,
                 blockers: Blockers) -> None:
        self.log = log
        self.claims = claims
        self.agents = agents
        self.presence = presence
        self.blockers = blockers
        self.kind = TaskKind(self)
        claims.register(self.kind)

    def handlers(self) -> dict[str, Handler]:
        return {"task_create": self.create, "claim": self.claim, "claim_next": self.claim_next,
                "complete": self.complete, "fail": self.fail, "release": self.release,
                "renew": self.renew, "task_get": self.task_get, "task_list": self.task_list,
                "task_next": self.task_next}

    # ------------------------------------------------------------ records and indexes
    @staticmethod
    def get(txn: Txn, task_id: str) -> dict[str, Any]:
        raw = txn.get("tasks", task_key(task_id))
        if raw is None:
            raise NotFound(f"no task '{task_id}'", {"task": task_id})
        return loads(raw)

    @staticmethod
    def status_of(txn: Txn, task_id: str) -> str | None:
        raw = txn.get("tasks", task_key(task_id))
        return None if raw is None else loads(raw)["status"]

    @staticmethod
    def ready_key(task: dict[str, Any]) -> bytes:
        return ready_key(protocol.MAX_PRIORITY - task["priority"], task["order"], task["id"])

    def save(self, b: Batch, task: dict[str, Any], old: str | None) -> None:
        """Write a task and keep every index and counter in step with its status."""
        txn = b.txn
        new = task["status"]
        task["updated"] = b.now.wall
        tid = task_key(task["id"])
        if old != new:
            if old is not None:
                if old in BY_STATUS:
                    txn.delete("by_status", status_key(old, tid))
                self._count(b, old, -1)
            if new in BY_STATUS:
                txn.put("by_status", status_key(new, tid), b"")
            self._count(b, new, +1)
            # The ready index is cleaned lazily: a claim leaves its entry (a claim then
            # dirties one B-tree less, the cost that dominates a group commit); the entry
            # goes when the task completes or dies, or when claim_next passes it, and a
            # claimed task that returns to available finds its entry in place. So the
            # index holds the available tasks plus at most the claimed ones.
            if new == AVAILABLE:
                txn.put("ready", self.ready_key(task), b"")
            elif new in _DONE:
                txn.delete("ready", self.ready_key(task))
        txn.put("tasks", tid, dumps(task))

    def delete(self, b: Batch, task: dict[str, Any]) -> None:
        """Remove a task that is not claimed, with its index entries and its count (an
        admin purge); what waits on it is the caller's to check."""
        txn, status, tid = b.txn, task["status"], task_key(task["id"])
        assert status != CLAIMED, "release a claim before deleting its task"
        if status in BY_STATUS:
            txn.delete("by_status", status_key(status, tid))
        txn.delete("ready", self.ready_key(task))
        if status == WAITING:  # it no longer waits on its dependencies
            for dep in task["depends_on"]:
                txn.delete("waiting_on", waiting_key(dep, task["id"]))
        self._count(b, status, -1)
        txn.delete("tasks", tid)

    @staticmethod
    def _count(b: Batch, status: str, delta: int) -> None:
        name = b"count:" + status.encode()
        set_counter(b, name, counter(b, name) + delta)

    @staticmethod
    def transition(task: dict[str, Any], action: str, new: str) -> str:
        old = task["status"]
        if new not in TRANSITIONS.get((old, action), ()):  # a bug: handlers check the state first
            raise AssertionError(f"illegal transition {old} -{action}-> {new}")
        task["status"] = new
        return old

    @staticmethod
    def history(task: dict[str, Any], entry: dict[str, Any]) -> None:
        task["history"].append(entry)
        del task["history"][:-HISTORY_LIMIT]

    def event(self, b: Batch, topic: str, task: dict[str, Any], old: str | None, **extra: Any) -> None:
        body = {"task_id": task["id"], "old_status": old, "new_status": task["status"],
                "claimed_by": extra.pop("claimed_by", None)}
        body.update(extra)
        self.log.emit(b, topic, body)

    def view(self, b: Batch, task: dict[str, Any]) -> dict[str, Any]:
        """A task as clients see it: the record plus its current claim."""
        view = dict(task)
        del view["order"]
        view.update(owner=None, token=None, expires_in=None)
        view.setdefault("completed_by", None)  # every view has the same keys (docs/CLI.md)
        view.setdefault("completed_token", None)
        if task["status"] == CLAIMED:
            key = resource_key(TASK, task["id"])
            claim = self.claims.get(b.txn, key)
            if claim is not None:
                view.update(owner=claim["agent"], token=claim["token"],
                            expires_in=self.claims.expires_in(key, claim["agent"], b.now))
        return view

    @staticmethod
    def move_legacy_claims(txn: Txn) -> int:
        """Schema 3 and older kept task claims in the claims table: move each next to its
        task. Returns how many moved."""
        moved = [(bytes(k), bytes(v)) for k, v in txn.scan("claims", prefix=TASK + b":")]
        for key, raw in moved:
            txn.delete("claims", key)
            txn.put("tasks", task_claim_key(key[len(TASK) + 1:]), raw)
        return len(moved)

    # ------------------------------------------------------------ claiming
    def _holding(self, b: Batch, task: dict[str, Any], agent: str, token: int | None
                 ) -> tuple[bytes, dict[str, Any]]:
        """The caller's current claim on a task, or the precise refusal."""
        key = resource_key(TASK, task["id"])
        claim = self.claims.get(b.txn, key)
        if claim is None or claim["agent"] != agent or (token is not None and claim["token"] != token):
            raise refusal(task, claim, agent, token, b.now)
        return key, claim

    def _reply(self, b: Batch, task_id: str, claim: dict[str, Any], key: bytes) -> dict[str, Any]:
        return {"task": task_id, "agent": claim["agent"], "token": claim["token"],
                "lease": claim["lease"], "expires_in": self.claims.expires_in(key, claim["agent"], b.now)}

    def _take(self, b: Batch, task: dict[str, Any], agent: dict[str, Any], ttl: float | None) -> dict[str, Any]:
        key = resource_key(TASK, task["id"])
        first = not self.claims.is_busy(agent["id"])
        claim = self.claims.grant(b, key, agent, ttl, check={"task": task})
        old = self.transition(task, "claim", CLAIMED)
        task["claims"] += 1
        self.save(b, task, old)
        self.event(b, "task.claimed", task, old, claimed_by=agent["id"], token=claim["token"])
        self.presence.claimed(b, agent, task["id"], first)
        return self._reply(b, task["id"], claim, key)

    def claim(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        task_id, agent_id = body["task"], body["agent"]
        task = self.get(b.txn, task_id)
        key = resource_key(TASK, task_id)
        if task["status"] == CLAIMED:
            claim = self.claims.get(b.txn, key) or {}
            if claim.get("agent") == agent_id:  # a retry by the holder: the same claim
                record = self.agents.ensure(b, agent_id, body["ttl"])
                if body["ttl"]:
                    self.claims.renew(key, body["ttl"], b.now)
                return self._reply(b, task_id, claim, key) | {"lease": record["lease"]}
        refusal = self.kind.conflict(b, key, agent_id, {"task": task})
        if refusal is not None:  # refused before the agent is touched: nothing written
            raise refusal
        agent = self.agents.ensure(b, agent_id, body["ttl"])
        return self._take(b, task, agent, body["ttl"])

    def claim_next(self, b: Batch, body: dict[str, Any]) -> dict[str, Any] | None:
        txn = b.txn
        agent = self.agents.ensure(b, body["agent"], body["ttl"])
        caps = set(body["capabilities"] if body["capabilities"] is not None else agent["capabilities"])
        stale: list[bytes] = []
        found = self._first_ready(txn, caps, stale)
        for key in stale:
            txn.delete("ready", key)
        if found is None:
            return None
        txn.delete("ready", self.ready_key(found))
        reply = self._take(b, found, agent, body["ttl"])
        return reply | {"task_record": self.view(b, found)}

    def _first_ready(self, txn: Txn, caps: set[str], stale: list[bytes]) -> dict[str, Any] | None:
        """The claim order, once: the first available task of the ready index (priority, then
        age) whose ``requires`` ``caps`` cover. Index entries of tasks no longer available
        (claimed: see save) go to ``stale`` for a writer to drop."""
        for key, _ in txn.scan("ready"):
            task = self.get(txn, key[READY_ID_AT:].decode())
            if task["status"] != AVAILABLE:
                stale.append(bytes(key))
            elif set(task["requires"]) <= caps:
                return task
        return None

    def task_next(self, b: Batch, body: dict[str, Any]) -> dict[str, Any] | None:
        caps = body["capabilities"]
        if caps is None:
            agent = None if body["agent"] is None else self.agents.get(b.txn, body["agent"])
            caps = [] if agent is None else agent["capabilities"]
        found = self._first_ready(b.txn, set(caps), [])  # a read: stale entries stay for the next claim
        return None if found is None else self.view(b, found)

    def complete(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        task_id, agent_id = body["task"], body["agent"]
        task = self.get(b.txn, task_id)
        if task["status"] == COMPLETED and task.get("completed_by") == agent_id and (
                body["token"] is None or body["token"] == task.get("completed_token")):
            return self.view(b, task)  # a retry of a complete that succeeded
        key, claim = self._holding(b, task, agent_id, body["token"])
        self.claims.end(b, key, agent_id)
        old = self.transition(task, "complete", COMPLETED)
        task.update(result=body["result"], completed_by=agent_id, completed_token=claim["token"])
        self.save(b, task, old)
        agent = self.agents.ensure(b, agent_id, None)
        agent["completed"] += 1
        self.event(b, "task.completed", task, old, claimed_by=agent_id, token=claim["token"])
        self.presence.finished(b, agent, task_id, completed=True)
        self.agents.put(b, agent)
        self._wake_dependents(b, task_id)
        return self.view(b, task)

    def _wake_dependents(self, b: Batch, done: str) -> None:
        txn = b.txn
        prefix = waiting_key(done)
        waiting = [bytes(k) for k, _ in txn.scan("waiting_on", prefix=prefix)]
        for k in waiting:
            txn.delete("waiting_on", k)
            task = self.get(txn, k[len(prefix):].decode())
            if task["status"] == WAITING and all(self.status_of(txn, d) == COMPLETED
                                                 for d in task["depends_on"]):
                old = self.transition(task, "dependencies_done", AVAILABLE)
                self.save(b, task, old)
                self.event(b, "task.available", task, old, completed_dependency=done)

    def fail(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        task_id, agent_id = body["task"], body["agent"]
        task = self.get(b.txn, task_id)
        key, claim = self._holding(b, task, agent_id, body["token"])
        self.claims.end(b, key, agent_id)
        task["attempts"] += 1
        new = DEAD if task["attempts"] >= task["max_attempts"] else AVAILABLE
        old = self.transition(task, "fail", new)
        self.history(task, {"ts": b.now.wall, "event": "failed", "agent": agent_id,
                            "token": claim["token"], "error": body["error"]})
        self.save(b, task, old)
        agent = self.agents.ensure(b, agent_id, None)
        agent["failed"] += 1
        self.event(b, "task.dead" if new == DEAD else "task.failed", task, old,
                   claimed_by=agent_id, token=claim["token"], error=body["error"],
                   attempts=task["attempts"])
        self.presence.finished(b, agent, task_id, completed=False)
        self.agents.put(b, agent)
        if new == DEAD:
            self._strand_dependents(b, task)
        return self.view(b, task)

    def _strand_dependents(self, b: Batch, dead: dict[str, Any]) -> None:
        """Tasks waiting on a dead task can never become available: the broker raises a
        blocker for each, so none waits silently forever."""
        prefix = waiting_key(dead["id"])
        for key in [bytes(k) for k, _ in b.txn.scan("waiting_on", prefix=prefix)]:
            waiting = self.get(b.txn, key[len(prefix):].decode())
            if waiting["status"] == WAITING:
                self.blockers.dependency_dead(b, waiting, dead)

    def release(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        task_id, agent_id = body["task"], body["agent"]
        task = self.get(b.txn, task_id)
        key, claim = self._holding(b, task, agent_id, body["token"])
        self.claims.drop(b, key, claim, "released")
        self.agents.ensure(b, agent_id, None)
        return self.view(b, self.get(b.txn, task_id))

    def renew(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        task_id, agent_id = body["task"], body["agent"]
        task = self.get(b.txn, task_id)
        key, claim = self._holding(b, task, agent_id, body["token"])
        record = self.agents.get(b.txn, agent_id)
        if record is None:  # cannot happen while the claim exists; kept as a guard
            raise LeaseExpired(f"agent '{agent_id}' has no live lease", {"agent": agent_id})
        self.agents.touch(b, record, body["ttl"])  # as a claim with a ttl does: the lease must not cut it
        ttl = body["ttl"] or claim.get("ttl")
        if ttl:
            self.claims.renew(key, ttl, b.now)
        return self._reply(b, task_id, claim, key)

    # ------------------------------------------------------------ creating and reading
    def create(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        txn = b.txn
        task_id = body["id"]
        if txn.get("tasks", task_key(task_id)) is not None:
            raise Conflict(f"task '{task_id}' already exists", {"task": task_id, "reason": "exists"})
        pending = []
        for dep in body["depends_on"]:
            status = self.status_of(txn, dep)
            if status is None:
                raise NotFound(f"dependency '{dep}' of '{task_id}' does not exist", {"task": dep})
            if status != COMPLETED:
                pending.append(dep)
        task = {
            "id": task_id, "type": body["type"], "data": body["data"], "priority": body["priority"],
            "requires": body["requires"], "max_attempts": body["max_attempts"],
            "depends_on": body["depends_on"], "status": WAITING if pending else AVAILABLE,
            "attempts": 0, "claims": 0, "created": b.now.wall, "updated": b.now.wall,
            "order": bump(b, b"order"), "result": None, "history": [],
        }
        for dep in pending:
            txn.put("waiting_on", waiting_key(dep, task_id), b"")
        self.save(b, task, None)
        self.event(b, "task.created", task, None, type=task["type"], priority=task["priority"],
                   requires=task["requires"])
        return self.view(b, task)

    def task_get(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        return self.view(b, self.get(b.txn, body["task"]))

    def task_list(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        txn = b.txn
        limit, after = body["limit"], body["after"].encode()
        status = body["status"]
        ids: Iterator[bytes]
        if status == AVAILABLE:  # the ready index: claim order (priority, then age)
            start = b""
            if after:
                raw = txn.get("tasks", after)
                if raw is None:
                    raise NotFound(f"no task '{body['after']}' to page after", {"task": body["after"]})
                start = self.ready_key(loads(raw)) + b"\0"
            ids = (k[READY_ID_AT:] for k, _ in txn.scan("ready", start=start))
        elif status == CLAIMED:  # the volatile claim index mirrors the claim records
            claimed = self.claims.held_of(TASK)
            ids = iter(claimed[bisect_right(claimed, after):] if after else claimed)
        elif status:
            prefix = status_key(status)
            ids = (k[len(prefix):] for k, _ in
                   txn.scan("by_status", start=prefix + after + b"\0" if after else b"", prefix=prefix))
        else:
            ids = (k for k, _ in txn.scan("tasks", start=after + b"\0" if after else b"")
                   if not is_task_claim_key(k))
        tasks: list[dict[str, Any]] = []
        more = False
        for tid in ids:
            task = self.get(txn, tid.decode())
            if status == AVAILABLE and task["status"] != AVAILABLE:
                continue  # a claimed task's ready entry, left for lazy cleanup
            if len(tasks) == limit:
                more = True
                break
            tasks.append(self.view(b, task))
        return {"tasks": tasks, "more": more, "seq": counter(b, b"seq")}
