"""The broker's state machine: tasks, claims, leases and agents. No sockets, no clock,
no LMDB: every entry point takes the transaction to work in and ``now`` from the caller.

Task states and the only transitions between them (the table is :data:`TRANSITIONS`)::

    waiting ──(last dependency completed)──> available
    available ──claim / claim_next──> claimed
    claimed ──complete (owner, current token)──> completed
    claimed ──fail──> available            (attempts < max_attempts)
    claimed ──fail──> dead                 (attempts == max_attempts)
    claimed ──release / lease or claim expiry / unregister──> available

Rules the tests hold the machine to:

* A claim is a record ``claims[resource] = {agent, token, ...}``; creating it is a
  check-and-set inside the single write transaction, so of any number of racers exactly one
  wins. Every claim gets a fresh fencing token from one store-wide counter (``token``),
  so tokens only ever increase, also across restarts.
* Every claim hangs on its agent's lease. A lease lapses when the agent sends nothing for
  its TTL; then all its claims are released and ``agent.expired`` / ``task.released`` say so.
  A claim made with its own ``ttl`` also lapses on its own deadline unless renewed.
* Deadlines are volatile (decided by the broker's monotonic clock, passed in as ``now``):
  heartbeats and renewals write nothing to disk, and after a restart :meth:`Core.recover`
  gives every lease and claim its full TTL again (no mass expiry after downtime).
* complete / fail / release / renew need the owner; when a token is given it must be the
  claim's current one, so a paused agent that lost its claim cannot clobber the next
  owner's work. The refusal says how that claim ended, from the task's history (every
  ending is recorded: released, failed, lease_expired, claim_expired, unregistered; and
  the completion): its own lapse is ``lease_expired`` (lease lapsed or unregistered) or
  ``claim_expired``; a release, failure or completion is ``stale_token`` (``not_owner``
  without a token); a token the task has no record of is ``stale_token``. Every refusal
  names who holds the task now.
* Every change appends an event to the persisted log with a gap-free sequence number in
  the same transaction; the broker publishes them after the commit.
* Handlers check everything before they write, so a refused request changes nothing.

Claims are generic over resources (``task:<id>`` today); later resources such as path
reservations reuse the same claim records, agent index, deadlines, tokens and events.
"""

from __future__ import annotations

import bisect
import heapq
import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import orjson

from . import protocol
from .errors import (
    BadRequest,
    ClaimExpired,
    Conflict,
    LeaseExpired,
    NotFound,
    NotOwner,
    RemoteError,
    SnapshotRequired,
    StaleToken,
)
from .protocol import Event
from .store import Txn

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")

TRANSITIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("waiting", "dependencies_done"): ("available",),
    ("available", "claim"): ("claimed",),
    ("claimed", "complete"): ("completed",),
    ("claimed", "fail"): ("available", "dead"),
    ("claimed", "release"): ("available",),
}

#: entries kept in a task's history (how each claim that did not complete ended: released,
#: failed, lease_expired, claim_expired, unregistered); older ones are dropped
HISTORY_LIMIT = 50

#: how a claim ended, as a refusal explains it (history ``event``, plus completion)
_ENDED = {
    "lease_expired": "agent '{agent}''s lease expired",
    "unregistered": "agent '{agent}' unregistered",
    "claim_expired": "the claim's TTL ran out",
    "released": "'{agent}' released it",
    "failed": "'{agent}' reported it failed",
    "completed": "'{agent}' completed the task",
}
#: endings that are a lapse (the agent did not end the claim itself) -> the error to raise
_LAPSED: dict[str, type[RemoteError]] = {
    "lease_expired": LeaseExpired, "unregistered": LeaseExpired, "claim_expired": ClaimExpired}

#: statuses with an index of their own; available tasks are listed from the ready index
#: and claimed ones from the claim records, so a claim updates two trees less
_BY_STATUS = ("waiting", "completed", "dead")
_COUNTER = b"\xff"


@dataclass(frozen=True)
class Now:
    """The caller's clock, read once per batch: ``mono`` for deadlines, ``wall`` for records."""

    mono: float
    wall: float


@dataclass(frozen=True)
class Recovery:
    """What :meth:`Core.recover` found and did, for the broker's start log."""

    agents: int  #: leases restarted with a full TTL
    claims: int  #: claims held (each keeps its task; claim TTLs restarted too)
    claim_index: bool  #: True: a clean shutdown's claim index was read; False: every task was scanned
    trimmed_events: int  #: old events dropped to fit event_log_size
    moved_claims: int  #: schema-3 task claims moved from the claims table next to their task


@dataclass
class Settings:
    default_ttl: float = 30.0
    event_log_size: int = 100_000


def _task_key(task_id: str) -> bytes:
    return b"task:" + task_id.encode()


# A task's claim record sits right after the task record: same table, key id + NUL (ids
# never hold NUL). A claim then dirties the task's leaf page and no other tree; every page
# a commit writes is one more to sync (bench/where.py). Other resources keep "claims".
_CLAIM_SUFFIX = b"\0"


#: meta key of the claim index a clean shutdown leaves (resource keys, NUL-separated)
_CLAIM_INDEX = b"claim_index"


def _claim_slot(key: bytes) -> tuple[str, bytes]:
    """(table, key) where the claim on resource ``key`` is stored."""
    if key[:5] == b"task:":
        return "tasks", key[5:] + _CLAIM_SUFFIX
    return "claims", key


def _get_claim(txn: Txn, key: bytes) -> bytes | None:
    return txn.get(*_claim_slot(key))


def _claim_records(txn: Txn) -> Iterator[tuple[bytes, bytes]]:
    """Every (resource key, claim record) in the store."""
    for key, raw in txn.scan("claims"):
        yield bytes(key), raw
    for key, raw in txn.scan("tasks"):
        if key[-1:] == _CLAIM_SUFFIX:
            yield b"task:" + key[:-1], raw


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


class Core:
    """The state machine. One instance per broker; it owns the volatile deadlines."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self._lease_deadline: dict[str, float] = {}
        self._claim_deadline: dict[bytes, float] = {}
        self._heap: list[tuple[float, int, str | bytes]] = []  # (deadline, 0 lease | 1 claim, key)
        self._queued: dict[tuple[int, str | bytes], float] = {}  # the live heap entry per key
        # agent -> resource keys it holds: what a lapsed lease releases. Volatile (rebuilt
        # from the claims table by recover/resync), so a claim writes one table less.
        self._held: dict[str, set[bytes]] = {}
        self._events: list[Event] = []
        self._counter_txn: Txn | None = None  # see _counter
        self._counter_values: dict[bytes, int] = {}
        self._handlers: dict[str, Callable[[Txn, dict[str, Any], Now], Any]] = {
            "register": self._register,
            "heartbeat": self._heartbeat,
            "unregister": self._unregister,
            "task_create": self._task_create,
            "claim": self._claim,
            "claim_next": self._claim_next,
            "complete": self._complete,
            "fail": self._fail,
            "release": self._release,
            "renew": self._renew,
            "publish": self._publish,
            "task_get": self._task_get,
            "task_list": self._task_list,
            "agent_list": self._agent_list,
            "status": self._status,
            "replay": self._replay,
        }

    # ------------------------------------------------------------ entry points
    def handle(self, txn: Txn, op: str, body: dict[str, Any], now: Now) -> tuple[Any, list[Event]]:
        """Apply one validated request. Returns (reply body, events it appended).
        Raises a RemoteError when refused; a refused request has written nothing."""
        self._events = []
        reply = self._handlers[op](txn, body, now)
        events, self._events = self._events, []
        return reply, events

    def expire(self, txn: Txn, now: Now) -> list[Event]:
        """Release every lease and claim whose deadline has passed."""
        self._events = []
        while self._heap and self._heap[0][0] <= now.mono:
            queued, kind, key = heapq.heappop(self._heap)
            if self._queued.get((kind, key)) != queued:
                continue  # superseded by an earlier entry for the same key
            del self._queued[(kind, key)]
            live = (self._lease_deadline if kind == 0 else self._claim_deadline).get(key)  # type: ignore[call-overload]
            if live is None:
                continue
            if live != queued:  # renewed since it was queued: queue it again at its real
                self._queue(kind, key, live)  # deadline, so expiries fire in deadline order
            elif kind == 0:
                self._end_agent(txn, key, now, "lease_expired")  # type: ignore[arg-type]
            else:
                claim = _get_claim(txn, key)  # type: ignore[arg-type]
                del self._claim_deadline[key]  # type: ignore[arg-type]
                if claim is not None:
                    self._drop_claim(txn, key, orjson.loads(claim), now, "claim_expired")  # type: ignore[arg-type]
        events, self._events = self._events, []
        return events

    def last_seq(self, txn: Txn) -> int:
        return self._counter(txn, b"seq")

    def next_deadline(self) -> float | None:
        """When expire() next has work: the earliest queued deadline (a renewed one is
        queued again then, so this may be early, never late)."""
        while self._heap:
            queued, kind, key = self._heap[0]
            if self._queued.get((kind, key)) == queued:
                return queued
            heapq.heappop(self._heap)
        return None

    def recover(self, txn: Txn, now: Now) -> Recovery:
        """After a (re)start: every lease and every claim TTL starts afresh. Returns what it
        found and did, for the broker's start log."""
        self._lease_deadline.clear()
        self._claim_deadline.clear()
        self._heap.clear()
        self._queued.clear()
        trimmed = self._trim_log(txn)
        # schema 3 and older kept task claims in the claims table: move them next to their task
        moved = [(bytes(k), bytes(v)) for k, v in txn.scan("claims", prefix=b"task:")]
        for key, raw in moved:
            txn.delete("claims", key)
            txn.put(*_claim_slot(key), raw)
        indexed = self._indexed_claims(txn)
        self.resync(txn, now, indexed)
        return Recovery(agents=len(self._lease_deadline),
                        claims=sum(len(keys) for keys in self._held.values()),
                        claim_index=indexed is not None, trimmed_events=trimmed,
                        moved_claims=len(moved))

    @staticmethod
    def _indexed_claims(txn: Txn) -> list[tuple[bytes, bytes]] | None:
        """The claims a clean shutdown's index names (None: no usable index, scan). The
        index goes now, in this transaction, so it never describes a later state."""
        index = txn.get("meta", _CLAIM_INDEX)
        if index is None:  # not closed cleanly, or never
            return None
        txn.delete("meta", _CLAIM_INDEX)
        records = [(key, _get_claim(txn, key)) for key in index.split(b"\0") if key]
        if any(raw is None for _, raw in records):  # cannot happen unless edited by hand
            return None
        return records  # type: ignore[return-value]

    def resync(self, txn: Txn, now: Now, claims: Iterable[tuple[bytes, bytes]] | None = None) -> None:
        """Make the volatile indexes agree with the store again: after a start (recover has
        emptied them, so every lease and claim TTL starts afresh), or after a batch was
        rolled back, whose in-memory changes the store no longer has (an agent it added, a
        lease or claim TTL its expiry used up). A deadline still held is kept; a missing
        one starts afresh at ``now``. Without ``claims`` (every resource key and claim
        record) it reads every task: a task's claim is stored beside it."""
        self._load_claims(_claim_records(txn) if claims is None else claims, now)
        agents = {bytes(key).decode(): raw for key, raw in txn.scan("agents")}
        for agent in [a for a in self._lease_deadline if a not in agents]:
            del self._lease_deadline[agent]
        for agent, raw in agents.items():
            if agent not in self._lease_deadline:
                self._set_lease(agent, orjson.loads(raw)["ttl"], now)

    def _load_claims(self, records: Iterable[tuple[bytes, bytes]], now: Now) -> None:
        self._held = {}
        live = set()
        for key, raw in records:
            claim = orjson.loads(raw)
            self._held.setdefault(claim["agent"], set()).add(key)
            live.add(key)
            if claim.get("ttl") and key not in self._claim_deadline:
                self._set_claim_deadline(key, claim["ttl"], now)
        for key in [k for k in self._claim_deadline if k not in live]:
            del self._claim_deadline[key]

    def checkpoint(self, txn: Txn) -> None:
        """On a clean shutdown: record which resources are claimed, so the next start reads
        those claims instead of every task (recover)."""
        txn.put("meta", _CLAIM_INDEX, b"\0".join(sorted(k for keys in self._held.values() for k in keys)))

    # ------------------------------------------------------------ counters and events
    # Counters live at the end of the event log's key space (b"\xff" sorts after every
    # 8-byte seq), so the newest events and the counters share a leaf page: a write
    # dirties one page less than with a table of their own.
    #
    # A claim reads four counters (seq, token, two status counts) and a batch of claims
    # the same four again, so values read or written in the current transaction are kept
    # here. The cache belongs to one transaction object: a new one (the next batch, or a
    # batch applied again after a rollback) starts empty, so it never outlives the data.
    def _counters(self, txn: Txn) -> dict[bytes, int]:
        if txn is not self._counter_txn:
            self._counter_txn, self._counter_values = txn, {}
        return self._counter_values

    def _counter(self, txn: Txn, name: bytes) -> int:
        values = self._counters(txn)
        value = values.get(name)
        if value is None:
            raw = txn.get("events", _COUNTER + name)
            value = values[name] = _U64.unpack(raw)[0] if raw else 0
        return value

    def _set_counter(self, txn: Txn, name: bytes, value: int) -> None:
        self._counters(txn)[name] = value
        txn.put("events", _COUNTER + name, _U64.pack(value))

    def _next(self, txn: Txn, name: bytes) -> int:
        value = self._counter(txn, name) + 1
        self._set_counter(txn, name, value)
        return value

    def _emit(self, txn: Txn, topic: str, body: dict[str, Any], now: Now) -> None:
        body["ts"] = now.wall
        seq = self._next(txn, b"seq")
        raw = _dumps(body)  # encoded once: for the log here and for PUB by the broker
        txn.put("events", _U64.pack(seq), b'["' + topic.encode() + b'",' + raw + b"]")
        floor = seq - self.settings.event_log_size
        if floor > 0:
            # the log holds exactly the seqs above the previous floor (it is gap-free and
            # recover() trims it to size), so one key drops out: no cursor per event
            txn.delete("events", _U64.pack(floor))
        self._events.append(Event(topic, seq, body, raw))

    def _trim_log(self, txn: Txn) -> int:
        """Drop every event at or below the floor (after a start with a smaller
        event_log_size, the log may hold more than _emit's one-key trim removes); returns
        how many."""
        floor = _U64.pack(max(0, self._counter(txn, b"seq") - self.settings.event_log_size))
        doomed = []
        for key, _ in txn.scan("events"):
            if key > floor or key[:1] == _COUNTER:
                break
            doomed.append(key)
        for key in doomed:
            txn.delete("events", key)
        return len(doomed)

    def _task_event(self, txn: Txn, topic: str, task: dict[str, Any], old: str | None,
                    now: Now, **extra: Any) -> None:
        body = {"task_id": task["id"], "old_status": old, "new_status": task["status"],
                "claimed_by": extra.pop("claimed_by", None)}
        body.update(extra)
        self._emit(txn, topic, body, now)

    # ------------------------------------------------------------ deadlines (volatile)
    def _set_lease(self, agent: str, ttl: float, now: Now) -> float:
        deadline = now.mono + ttl
        self._lease_deadline[agent] = deadline
        self._queue(0, agent, deadline)
        return deadline

    def _set_claim_deadline(self, key: bytes, ttl: float, now: Now) -> float:
        deadline = now.mono + ttl
        self._claim_deadline[key] = deadline
        self._queue(1, key, deadline)
        return deadline

    def _queue(self, kind: int, key: str | bytes, deadline: float) -> None:
        """At most one heap entry per key: a heartbeat that only extends a deadline pushes
        nothing (expire re-queues it when the old entry comes due), so the heap stays as
        small as the number of leases and claims however often agents heartbeat."""
        queued = self._queued.get((kind, key))
        if queued is None or deadline < queued:
            self._queued[(kind, key)] = deadline
            heapq.heappush(self._heap, (deadline, kind, key))

    def lease_remaining(self, agent: str, now: Now) -> float | None:
        deadline = self._lease_deadline.get(agent)
        return None if deadline is None else max(0.0, deadline - now.mono)

    # ------------------------------------------------------------ records
    @staticmethod
    def _get_task(txn: Txn, task_id: str) -> dict[str, Any]:
        raw = txn.get("tasks", task_id.encode())
        if raw is None:
            raise NotFound(f"no task '{task_id}'", {"task": task_id})
        return orjson.loads(raw)

    @staticmethod
    def _get_agent(txn: Txn, agent: str) -> dict[str, Any] | None:
        raw = txn.get("agents", agent.encode())
        return None if raw is None else orjson.loads(raw)

    @staticmethod
    def _put_agent(txn: Txn, record: dict[str, Any]) -> None:
        txn.put("agents", record["id"].encode(), _dumps(record))

    def _ready_key(self, task: dict[str, Any]) -> bytes:
        return (_U32.pack(protocol.MAX_PRIORITY - task["priority"]) + _U64.pack(task["order"])
                + task["id"].encode())

    def _save_task(self, txn: Txn, task: dict[str, Any], old: str | None, now: Now) -> None:
        """Write a task and keep every index and counter in step with its status."""
        new = task["status"]
        task["updated"] = now.wall
        tid = task["id"].encode()
        if old != new:
            if old is not None:
                if old in _BY_STATUS:
                    txn.delete("by_status", old.encode() + b"\0" + tid)
                self._bump(txn, old, -1)
            if new in _BY_STATUS:
                txn.put("by_status", new.encode() + b"\0" + tid, b"")
            self._bump(txn, new, +1)
            # The ready index is cleaned lazily: a claim leaves its entry (a claim then
            # dirties one B-tree less, the cost that dominates a group commit); the entry
            # goes when the task completes or dies, or when claim_next passes it, and a
            # claimed task that returns to available finds its entry in place. So the
            # index holds the available tasks plus at most the claimed ones.
            if new == "available":
                txn.put("ready", self._ready_key(task), b"")
            elif new in ("completed", "dead"):
                txn.delete("ready", self._ready_key(task))
        txn.put("tasks", tid, _dumps(task))

    def _bump(self, txn: Txn, status: str, delta: int) -> None:
        name = b"count:" + status.encode()
        self._set_counter(txn, name, self._counter(txn, name) + delta)

    def _transition(self, task: dict[str, Any], action: str, new: str) -> str:
        old = task["status"]
        allowed = TRANSITIONS.get((old, action), ())
        if new not in allowed:  # a bug, not a refusal: handlers check the state first
            raise AssertionError(f"illegal transition {old} -{action}-> {new}")
        task["status"] = new
        return old

    @staticmethod
    def _history(task: dict[str, Any], entry: dict[str, Any]) -> None:
        task["history"].append(entry)
        del task["history"][:-HISTORY_LIMIT]

    def _view(self, txn: Txn, task: dict[str, Any], now: Now) -> dict[str, Any]:
        """A task as clients see it: the record plus its current claim."""
        view = dict(task)
        del view["order"]
        view.update(owner=None, token=None, expires_in=None)
        view.setdefault("completed_by", None)  # every view has the same keys (docs/CLI.md)
        view.setdefault("completed_token", None)
        if task["status"] == "claimed":
            key = _task_key(task["id"])
            raw = _get_claim(txn, key)
            if raw is not None:
                claim = orjson.loads(raw)
                view.update(owner=claim["agent"], token=claim["token"],
                            expires_in=self._claim_expires_in(key, claim["agent"], now))
        return view

    def _claim_expires_in(self, key: bytes, agent: str, now: Now) -> float | None:
        claim, lease = self._claim_deadline.get(key), self._lease_deadline.get(agent)
        deadline = lease if claim is None else claim if lease is None else min(claim, lease)
        return None if deadline is None else round(max(0.0, deadline - now.mono), 3)

    # ------------------------------------------------------------ agents and leases
    def _ensure_agent(self, txn: Txn, agent: str, ttl: float | None, now: Now) -> dict[str, Any]:
        """The agent's record; an agent acting without registering gets a lease of its own."""
        record = self._get_agent(txn, agent)
        if record is None:
            record = self._new_agent(agent, [], {}, ttl or self.settings.default_ttl,
                                     self._next(txn, b"token"), now, implicit=True)
            self._put_agent(txn, record)
            self._emit(txn, "agent.registered", {"agent": agent, "lease": record["lease"],
                                                 "ttl": record["ttl"], "implicit": True}, now)
            self._set_lease(agent, record["ttl"], now)
        else:
            self._touch(record, now, ttl)
        return record

    def _touch(self, record: dict[str, Any], now: Now, at_least: float | None = None) -> None:
        """Any request from an agent renews its lease (as a ZooKeeper session is)."""
        ttl = max(record["ttl"], at_least or 0.0)
        current = self._lease_deadline.get(record["id"], 0.0)
        if now.mono + ttl > current:
            self._set_lease(record["id"], ttl, now)

    @staticmethod
    def _new_agent(agent: str, caps: list[str], metadata: dict[str, Any], ttl: float, lease: int,
                   now: Now, implicit: bool = False) -> dict[str, Any]:
        return {"id": agent, "capabilities": caps, "metadata": metadata, "ttl": ttl,
                "lease": lease, "registered": now.wall, "implicit": implicit,
                "completed": 0, "failed": 0}

    def _register(self, txn: Txn, body: dict[str, Any], now: Now) -> dict[str, Any]:
        agent = body["agent"]
        ttl = body["ttl"] or self.settings.default_ttl
        record = self._get_agent(txn, agent)
        if record is None:
            record = self._new_agent(agent, body["capabilities"], body["metadata"], ttl,
                                     self._next(txn, b"token"), now)
        else:
            record.update(capabilities=body["capabilities"], metadata=body["metadata"], ttl=ttl,
                          implicit=False)
        self._put_agent(txn, record)
        self._emit(txn, "agent.registered", {"agent": agent, "lease": record["lease"], "ttl": ttl,
                                             "capabilities": record["capabilities"]}, now)
        self._set_lease(agent, ttl, now)
        return {"agent": agent, "lease": record["lease"], "ttl": ttl}

    def _heartbeat(self, txn: Txn, body: dict[str, Any], now: Now) -> dict[str, Any]:
        agent = body["agent"]
        record = self._get_agent(txn, agent)
        if record is None or (body["lease"] is not None and body["lease"] != record["lease"]):
            raise LeaseExpired(f"agent '{agent}' has no live lease; register again",
                               {"agent": agent})
        self._set_lease(agent, record["ttl"], now)
        return {"agent": agent, "lease": record["lease"], "ttl": record["ttl"]}

    def _unregister(self, txn: Txn, body: dict[str, Any], now: Now) -> dict[str, Any]:
        agent = body["agent"]
        if self._get_agent(txn, agent) is None:
            raise NotFound(f"no agent '{agent}'", {"agent": agent})
        released = self._end_agent(txn, agent, now, "unregistered")
        return {"agent": agent, "released": released}

    def _end_agent(self, txn: Txn, agent: str, now: Now, reason: str) -> list[str]:
        """The lease is over: release every claim, forget the agent."""
        keys = sorted(self._held.get(agent, ()))
        released: list[str] = []
        for key in keys:
            raw = _get_claim(txn, key)
            if raw is not None:
                self._drop_claim(txn, key, orjson.loads(raw), now, reason)
                released.append(key.split(b":", 1)[1].decode())
        txn.delete("agents", agent.encode())
        self._lease_deadline.pop(agent, None)
        topic = "agent.expired" if reason == "lease_expired" else "agent.unregistered"
        self._emit(txn, topic, {"agent": agent, "released": released}, now)
        return released

    # ------------------------------------------------------------ claims (generic)
    def _grant(self, txn: Txn, key: bytes, agent: dict[str, Any], ttl: float | None,
               now: Now) -> dict[str, Any]:
        token = self._next(txn, b"token")
        claim = {"agent": agent["id"], "token": token, "lease": agent["lease"], "ttl": ttl,
                 "since": now.wall}
        txn.put(*_claim_slot(key), _dumps(claim))
        self._held.setdefault(agent["id"], set()).add(key)
        if ttl:
            self._set_claim_deadline(key, ttl, now)
        return claim

    def _end_claim(self, txn: Txn, key: bytes, agent: str) -> None:
        """Remove a claim record with its volatile index entry and deadline."""
        txn.delete(*_claim_slot(key))
        keys = self._held.get(agent)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._held[agent]
        self._claim_deadline.pop(key, None)

    def _drop_claim(self, txn: Txn, key: bytes, claim: dict[str, Any], now: Now, reason: str) -> None:
        """End a claim that did not complete: the resource is free again."""
        self._end_claim(txn, key, claim["agent"])
        kind, _, name = key.partition(b":")
        if kind == b"task":
            task = self._get_task(txn, name.decode())
            old = self._transition(task, "release", "available")
            # every ending is recorded (the owner's own release too), so a refusal of a
            # later request with this token can say how the claim ended (_refusal)
            self._history(task, {"ts": now.wall, "event": reason, "agent": claim["agent"],
                                 "token": claim["token"]})
            self._save_task(txn, task, old, now)
            self._task_event(txn, "task.released", task, old, now, agent=claim["agent"],
                             token=claim["token"], reason=reason)

    def _holding(self, txn: Txn, task: dict[str, Any], agent: str, token: int | None,
                 now: Now) -> tuple[bytes, dict[str, Any]]:
        """The caller's current claim on a task, or the precise refusal (_refusal)."""
        key = _task_key(task["id"])
        raw = _get_claim(txn, key)
        claim = orjson.loads(raw) if raw is not None else None
        if claim is None or claim["agent"] != agent or (token is not None and claim["token"] != token):
            raise self._refusal(task, claim, agent, token, now)
        return key, claim

    @staticmethod
    def _ending(task: dict[str, Any], agent: str, token: int | None) -> dict[str, Any] | None:
        """How a claim on ``task`` ended, from its history (and its completion): the claim
        with ``token``, or without a token the agent's latest one (tokens only increase)."""
        endings = list(task["history"])
        if task["status"] == "completed" and task.get("completed_token") is not None:
            endings.append({"ts": task["updated"], "event": "completed", "agent": task["completed_by"],
                            "token": task["completed_token"]})
        if token is not None:
            return next((e for e in endings if e.get("token") == token), None)
        mine = [e for e in endings if e.get("agent") == agent and e.get("token") is not None]
        return max(mine, key=lambda e: e["token"], default=None)

    def _refusal(self, task: dict[str, Any], claim: dict[str, Any] | None, agent: str,
                 token: int | None, now: Now) -> RemoteError:
        """Why ``agent`` (with ``token``) does not hold ``task``, from what the store knows:
        its claim lapsed (LeaseExpired / ClaimExpired), ended otherwise (released, failed,
        completed: StaleToken, or NotOwner without a token), or the token names no claim on
        this task. Reads only: a refused request writes nothing."""
        task_id = task["id"]
        holder, current = (claim["agent"], claim["token"]) if claim else (None, None)
        if claim is not None and token is not None and claim["token"] == token:
            # the current token in the wrong hands is still not ownership
            return NotOwner(f"agent '{agent}' does not hold '{task_id}': '{holder}' holds it with "
                            f"token {token}", {"task": task_id, "agent": agent, "owner": holder})
        now_clause = (f"'{holder}' holds it now (token {current})" if claim
                      else f"'{task_id}' is not claimed (status {task['status']})")
        ending = self._ending(task, agent, token)
        if ending is None:
            if token is not None:
                held = f"'{holder}' holds it with token {current}" if claim else now_clause
                return StaleToken(f"token {token} is not the current claim on '{task_id}': {held}",
                                  {"task": task_id, "token": token, "holder": holder, "current": current})
            return NotOwner(f"agent '{agent}' does not hold '{task_id}': {now_clause}",
                            {"task": task_id, "agent": agent, "owner": holder})
        reason, ended_by, ended_token = ending["event"], ending["agent"], ending["token"]
        ago = max(0.0, now.wall - ending["ts"])
        how = (_ENDED[reason].format(agent=ended_by) if reason in _ENDED
               else f"'{ended_by}''s claim ended ({reason})")
        details = {"task": task_id, "token": ended_token, "agent": ended_by, "reason": reason,
                   "at": ending["ts"], "holder": holder, "current": current}
        lapsed = _LAPSED.get(reason)
        if lapsed is not None and ended_by == agent:
            after = f"; '{holder}' holds it now (token {current})" if claim else (
                f"; it is {task['status']} now" if task["status"] != "available" else "")
            return lapsed(f"claim on '{task_id}' (token {ended_token}) lapsed {ago:.1f} s ago: {how}; "
                          f"the task went back to the pool{after}", details)
        if token is None:  # the agent's own latest claim ended by its own hand (or completion)
            return NotOwner(f"agent '{agent}' does not hold '{task_id}': its claim (token {ended_token}) "
                            f"ended when {how} {ago:.1f} s ago; {now_clause}",
                            {"task": task_id, "agent": agent, "owner": holder} | details)
        whose = "" if ended_by == agent else f" was '{ended_by}''s claim, not '{agent}''s: it"
        return StaleToken(f"token {token} on '{task_id}'{whose} ended when {how} {ago:.1f} s ago; "
                          f"{now_clause}", details)

    def _claim_reply(self, task_id: str, claim: dict[str, Any], key: bytes, now: Now) -> dict[str, Any]:
        return {"task": task_id, "agent": claim["agent"], "token": claim["token"],
                "lease": claim["lease"], "expires_in": self._claim_expires_in(key, claim["agent"], now)}

    def _take(self, txn: Txn, task: dict[str, Any], agent: dict[str, Any], ttl: float | None,
              now: Now) -> dict[str, Any]:
        key = _task_key(task["id"])
        claim = self._grant(txn, key, agent, ttl, now)
        old = self._transition(task, "claim", "claimed")
        task["claims"] += 1
        self._save_task(txn, task, old, now)
        self._task_event(txn, "task.claimed", task, old, now, claimed_by=agent["id"],
                         token=claim["token"])
        return self._claim_reply(task["id"], claim, key, now)

    def _claim(self, txn: Txn, body: dict[str, Any], now: Now) -> dict[str, Any]:
        task_id, agent_id = body["task"], body["agent"]
        task = self._get_task(txn, task_id)
        key = _task_key(task_id)
        if task["status"] == "claimed":
            claim = orjson.loads(_get_claim(txn, key) or b"{}")
            if claim.get("agent") == agent_id:  # a retry by the holder: the same claim
                record = self._ensure_agent(txn, agent_id, body["ttl"], now)
                if body["ttl"]:
                    self._set_claim_deadline(key, body["ttl"], now)
                return self._claim_reply(task_id, claim, key, now) | {"lease": record["lease"]}
            raise Conflict(f"task '{task_id}' is held by '{claim.get('agent')}'",
                           {"task": task_id, "status": "claimed", "holder": claim.get("agent")})
        if task["status"] != "available":
            raise Conflict(f"task '{task_id}' is {task['status']}, not available",
                           {"task": task_id, "status": task["status"]})
        agent = self._ensure_agent(txn, agent_id, body["ttl"], now)
        return self._take(txn, task, agent, body["ttl"], now)

    def _claim_next(self, txn: Txn, body: dict[str, Any], now: Now) -> dict[str, Any] | None:
        agent = self._ensure_agent(txn, body["agent"], body["ttl"], now)
        caps = set(body["capabilities"] if body["capabilities"] is not None else agent["capabilities"])
        stale = []
        found = None
        for key, _ in txn.scan("ready"):
            task = self._get_task(txn, key[12:].decode())
            if task["status"] != "available":
                stale.append(bytes(key))  # claimed (see _save_task): drop it as we pass
            elif set(task["requires"]) <= caps:
                found = task
                break
        for key in stale:
            txn.delete("ready", key)
        if found is None:
            return None
        txn.delete("ready", self._ready_key(found))
        reply = self._take(txn, found, agent, body["ttl"], now)
        return reply | {"task_record": self._view(txn, found, now)}

    def _complete(self, txn: Txn, body: dict[str, Any], now: Now) -> dict[str, Any]:
        task_id, agent_id = body["task"], body["agent"]
        task = self._get_task(txn, task_id)
        if task["status"] == "completed" and task.get("completed_by") == agent_id and (
                body["token"] is None or body["token"] == task.get("completed_token")):
            return self._view(txn, task, now)  # a retry of a complete that succeeded
        key, claim = self._holding(txn, task, agent_id, body["token"], now)
        self._end_claim(txn, key, agent_id)
        old = self._transition(task, "complete", "completed")
        task.update(result=body["result"], completed_by=agent_id, completed_token=claim["token"])
        self._save_task(txn, task, old, now)
        agent = self._ensure_agent(txn, agent_id, None, now)
        agent["completed"] += 1
        self._put_agent(txn, agent)
        self._task_event(txn, "task.completed", task, old, now, claimed_by=agent_id, token=claim["token"])
        self._wake_dependents(txn, task_id, now)
        return self._view(txn, task, now)

    def _wake_dependents(self, txn: Txn, done: str, now: Now) -> None:
        prefix = done.encode() + b"\0"
        waiting = [k for k, _ in txn.scan("waiting_on", prefix=prefix)]
        for k in waiting:
            txn.delete("waiting_on", k)
            task = self._get_task(txn, k[len(prefix):].decode())
            if task["status"] == "waiting" and all(self._status_of(txn, d) == "completed"
                                                   for d in task["depends_on"]):
                old = self._transition(task, "dependencies_done", "available")
                self._save_task(txn, task, old, now)
                self._task_event(txn, "task.available", task, old, now, completed_dependency=done)

    def _status_of(self, txn: Txn, task_id: str) -> str | None:
        raw = txn.get("tasks", task_id.encode())
        return None if raw is None else orjson.loads(raw)["status"]

    def _fail(self, txn: Txn, body: dict[str, Any], now: Now) -> dict[str, Any]:
        task_id, agent_id = body["task"], body["agent"]
        task = self._get_task(txn, task_id)
        key, claim = self._holding(txn, task, agent_id, body["token"], now)
        self._end_claim(txn, key, agent_id)
        task["attempts"] += 1
        new = "dead" if task["attempts"] >= task["max_attempts"] else "available"
        old = self._transition(task, "fail", new)
        self._history(task, {"ts": now.wall, "event": "failed", "agent": agent_id,
                             "token": claim["token"], "error": body["error"]})
        self._save_task(txn, task, old, now)
        agent = self._ensure_agent(txn, agent_id, None, now)
        agent["failed"] += 1
        self._put_agent(txn, agent)
        self._task_event(txn, "task.dead" if new == "dead" else "task.failed", task, old, now,
                         claimed_by=agent_id, token=claim["token"], error=body["error"],
                         attempts=task["attempts"])
        return self._view(txn, task, now)

    def _release(self, txn: Txn, body: dict[str, Any], now: Now) -> dict[str, Any]:
        task_id, agent_id = body["task"], body["agent"]
        task = self._get_task(txn, task_id)
        key, claim = self._holding(txn, task, agent_id, body["token"], now)
        self._drop_claim(txn, key, claim, now, "released")
        self._ensure_agent(txn, agent_id, None, now)
        return self._view(txn, self._get_task(txn, task_id), now)

    def _renew(self, txn: Txn, body: dict[str, Any], now: Now) -> dict[str, Any]:
        task_id, agent_id = body["task"], body["agent"]
        task = self._get_task(txn, task_id)
        key, claim = self._holding(txn, task, agent_id, body["token"], now)
        record = self._get_agent(txn, agent_id)
        if record is None:  # cannot happen while the claim exists; kept as a guard
            raise LeaseExpired(f"agent '{agent_id}' has no live lease", {"agent": agent_id})
        self._touch(record, now, body["ttl"])  # as a claim with a ttl does: the lease must not cut it
        ttl = body["ttl"] or claim.get("ttl")
        if ttl:
            self._set_claim_deadline(key, ttl, now)
        return self._claim_reply(task_id, claim, key, now)

    # ------------------------------------------------------------ messages
    def _publish(self, txn: Txn, body: dict[str, Any], now: Now) -> dict[str, Any]:
        """A broadcast is an event and nothing else: one log record, no task or agent
        state (the sender is a label; publishing neither registers nor renews an agent)."""
        topic = protocol.MESSAGE_PREFIX + body["topic"]
        self._emit(txn, topic, {"data": body["data"], "from": body["agent"]}, now)
        return {"topic": topic, "seq": self._events[-1].seq}

    # ------------------------------------------------------------ tasks
    def _task_create(self, txn: Txn, body: dict[str, Any], now: Now) -> dict[str, Any]:
        task_id = body["id"]
        if txn.get("tasks", task_id.encode()) is not None:
            raise Conflict(f"task '{task_id}' already exists", {"task": task_id, "reason": "exists"})
        pending = []
        for dep in body["depends_on"]:
            status = self._status_of(txn, dep)
            if status is None:
                raise NotFound(f"dependency '{dep}' of '{task_id}' does not exist", {"task": dep})
            if status != "completed":
                pending.append(dep)
        task = {
            "id": task_id, "type": body["type"], "data": body["data"], "priority": body["priority"],
            "requires": body["requires"], "max_attempts": body["max_attempts"],
            "depends_on": body["depends_on"], "status": "waiting" if pending else "available",
            "attempts": 0, "claims": 0, "created": now.wall, "updated": now.wall,
            "order": self._next(txn, b"order"), "result": None, "history": [],
        }
        for dep in pending:
            txn.put("waiting_on", dep.encode() + b"\0" + task_id.encode(), b"")
        self._save_task(txn, task, None, now)
        self._task_event(txn, "task.created", task, None, now, type=task["type"],
                         priority=task["priority"], requires=task["requires"])
        return self._view(txn, task, now)

    def _task_get(self, txn: Txn, body: dict[str, Any], now: Now) -> dict[str, Any]:
        return self._view(txn, self._get_task(txn, body["task"]), now)

    def _task_list(self, txn: Txn, body: dict[str, Any], now: Now) -> dict[str, Any]:
        limit, after = body["limit"], body["after"].encode()
        status = body["status"]
        ids: Iterator[bytes]
        if status == "available":  # the ready index: claim order (priority, then age)
            start = b""
            if after:
                raw = txn.get("tasks", after)
                if raw is None:
                    raise NotFound(f"no task '{body['after']}' to page after", {"task": body["after"]})
                start = self._ready_key(orjson.loads(raw)) + b"\0"
            ids = (k[12:] for k, _ in txn.scan("ready", start=start))
        elif status == "claimed":  # the volatile claim index mirrors the claim records
            claimed = sorted(k[5:] for keys in self._held.values() for k in keys if k[:5] == b"task:")
            ids = iter(claimed[bisect.bisect_right(claimed, after):] if after else claimed)
        elif status:
            prefix = status.encode() + b"\0"
            ids = (k[len(prefix):] for k, _ in
                   txn.scan("by_status", start=prefix + after + b"\0" if after else b"", prefix=prefix))
        else:
            ids = (k for k, _ in txn.scan("tasks", start=after + b"\0" if after else b"")
                   if k[-1:] != _CLAIM_SUFFIX)
        tasks = []
        more = False
        for tid in ids:
            task = self._get_task(txn, tid.decode())
            if status == "available" and task["status"] != "available":
                continue  # a claimed task's ready entry, left for lazy cleanup
            if len(tasks) == limit:
                more = True
                break
            tasks.append(self._view(txn, task, now))
        return {"tasks": tasks, "more": more, "seq": self._counter(txn, b"seq")}

    def _agent_list(self, txn: Txn, body: dict[str, Any], now: Now) -> dict[str, Any]:
        agents = []
        for _, raw in txn.scan("agents"):
            record = orjson.loads(raw)
            remaining = self.lease_remaining(record["id"], now)
            record["expires_in"] = None if remaining is None else round(remaining, 3)
            agents.append(record)
        return {"agents": agents, "seq": self._counter(txn, b"seq")}

    def _status(self, txn: Txn, body: dict[str, Any], now: Now) -> dict[str, Any]:
        counts = {s: self._counter(txn, b"count:" + s.encode()) for s in protocol.STATUSES}
        # agents and claims are counted from the volatile indexes, which mirror the tables
        return {"tasks": counts, "agents": len(self._lease_deadline),
                "claims": sum(len(keys) for keys in self._held.values()),
                "seq": self._counter(txn, b"seq"), "token": self._counter(txn, b"token")}

    def _replay(self, txn: Txn, body: dict[str, Any], now: Now) -> dict[str, Any]:
        since, limit, topics = body["since"], body["limit"], tuple(body["topics"])
        last = self._counter(txn, b"seq")
        first = next(txn.scan("events"), None)
        oldest = _U64.unpack(first[0])[0] if first and first[0][:1] != _COUNTER else last + 1
        if since > last:  # a mistake, or a subscriber that followed another (or a restored) broker
            raise BadRequest(f"since {since} is ahead of the broker's last event {last}",
                             {"field": "since", "since": since, "last_seq": last})
        if since + 1 < oldest and since < last:
            raise SnapshotRequired(
                f"events after {since} were trimmed; the log starts at {oldest}",
                {"since": since, "oldest": oldest, "last_seq": last})
        events = []
        more = False
        for key, raw in txn.scan("events", start=_U64.pack(since + 1)):
            if key[:1] == _COUNTER:
                break
            topic, ebody = orjson.loads(raw)
            if topics and not topic.startswith(topics):
                continue
            if len(events) == limit:
                more = True
                break
            events.append({"topic": topic, "seq": _U64.unpack(key)[0], "body": ebody})
        return {"events": events, "last_seq": last, "more": more}
