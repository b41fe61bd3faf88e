"""Agents: their records, leases, liveness and the idle queue.

Rules it keeps:

* An agent exists while its lease does: ``register`` (or any request from an unknown agent,
  which gets an implicit lease of its own TTL) creates it, and it ends by ``unregister``
  or when it sends nothing for its TTL. Its lease id comes from the fencing-token counter,
  so a lease id is never reused.
* Any request from an agent renews its lease (as a ZooKeeper session is); ``heartbeat``
  does nothing else and writes nothing to disk (deadlines are volatile).
* Liveness is graded from the same clock: ``alive``; ``evasive`` once it was silent for
  EVASIVE_AFTER of its TTL (one heartbeat period missed), which ends nothing; ``gone`` when
  the lease lapses. Each step is an event (``agent.evasive``, ``agent.alive`` when heard
  from again, ``agent.expired``). Only the lease's end frees claims.
* When a lease ends every claim it holds is released first (claims.Claims.release_all),
  then the record goes and ``agent.expired`` / ``agent.unregistered`` names the released
  resources.
* The idle queue holds the agents whose stored state is ``idle`` and who hold no claim
  that makes them busy, in the order they became idle (``idle_order``, from one counter,
  stored in the record). It is volatile, rebuilt from the records (:meth:`Agents.restart`),
  so a claim by an idle agent writes no agent record. Presence changes go through
  presence.Presence; this module only keeps the queue in step.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .. import protocol
from ..errors import LeaseExpired, NotFound
from ..protocol.states import AgentState, Liveness
from .claims import Claims
from .context import Batch, Now, Settings
from .deadlines import Deadlines, Due
from .eventlog import EventLog, bump
from .schema import agent_key, dumps, loads

if TYPE_CHECKING:
    from ..store.base import Txn

Handler = Callable[[Batch, dict[str, Any]], Any]

# the states bound once: every request from an agent asks them (protocol/states.py)
IDLE, BUSY = AgentState.IDLE, AgentState.BUSY
ALIVE, EVASIVE, GONE = Liveness.ALIVE, Liveness.EVASIVE, Liveness.GONE

#: presence fields of an agent record and their values for a record written before them
PRESENCE_DEFAULTS: dict[str, Any] = {
    "state": IDLE, "since": None, "task": None, "last_task": None, "reason": None,
    "message": None, "cost": 0.0, "idle_order": 0, "last_completed": None, "blocker": None}


class IdleQueue:
    """Agents waiting for work, in arrival order: (idle_order, agent) kept sorted."""

    def __init__(self) -> None:
        self._order: dict[str, int] = {}
        self._sorted: list[tuple[int, str]] = []

    def __contains__(self, agent: str) -> bool:
        return agent in self._order

    def __len__(self) -> int:
        return len(self._order)

    def add(self, agent: str, order: int) -> None:
        self.remove(agent)
        self._order[agent] = order
        insort(self._sorted, (order, agent))

    def remove(self, agent: str) -> None:
        order = self._order.pop(agent, None)
        if order is not None:
            del self._sorted[bisect_left(self._sorted, (order, agent))]

    def position(self, agent: str) -> int | None:
        """1 for the agent waiting longest; None when it is not idle."""
        order = self._order.get(agent)
        return None if order is None else bisect_left(self._sorted, (order, agent)) + 1

    def agents(self) -> list[str]:
        return [agent for _, agent in self._sorted]

    def clear(self) -> None:
        self._order.clear()
        self._sorted.clear()


class Agents:
    """The agents table, the lease and liveness deadlines, the idle queue."""

    def __init__(self, settings: Settings, log: EventLog, deadlines: Deadlines, claims: Claims) -> None:
        self.settings = settings  # read at each use, as the event log does
        self.log = log
        self.deadlines = deadlines
        self.claims = claims
        self.idle = IdleQueue()
        self.evasive: set[str] = set()
        #: called with (batch, agent) when a lease ends, after its claims were released
        self.on_end: list[Callable[[Batch, str], None]] = []

    def handlers(self) -> dict[str, Handler]:
        return {"register": self.register, "heartbeat": self.heartbeat, "unregister": self.unregister}

    # ------------------------------------------------------------ records
    @staticmethod
    def get(txn: Txn, agent: str) -> dict[str, Any] | None:
        raw = txn.get("agents", agent_key(agent))
        return None if raw is None else Agents.parse(raw)

    @staticmethod
    def parse(raw: bytes) -> dict[str, Any]:
        record = loads(raw)
        record.setdefault("groups", [])  # written before messages existed
        if "state" not in record:  # written before presence existed
            record.update({k: v for k, v in PRESENCE_DEFAULTS.items() if k not in record},
                          since=record["registered"], idle_order=record["lease"])
        return record

    def records(self, txn: Txn) -> Iterator[dict[str, Any]]:
        """Every agent record, in id order."""
        for _, raw in txn.scan("agents"):
            yield self.parse(raw)

    @staticmethod
    def put(b: Batch, record: dict[str, Any]) -> None:
        b.txn.put("agents", agent_key(record["id"]), dumps(record))

    def _new(self, b: Batch, agent: str, caps: list[str], metadata: dict[str, Any], ttl: float,
             implicit: bool = False) -> dict[str, Any]:
        lease = bump(b, b"token")
        return {"id": agent, "capabilities": caps, "groups": [], "metadata": metadata, "ttl": ttl, "lease": lease,
                "registered": b.now.wall, "implicit": implicit, "completed": 0, "failed": 0,
                **PRESENCE_DEFAULTS, "since": b.now.wall, "idle_order": bump(b, b"idle"), "key": b.key}

    def lease_remaining(self, agent: str, now: Now) -> float | None:
        return self.deadlines.remaining(Due.LEASE, agent, now.mono)

    def count(self) -> int:
        return len(self.deadlines.lease)

    def live(self, agent: str) -> bool:
        """Does ``agent`` hold a lease? (The volatile lease table mirrors the records.)"""
        return agent in self.deadlines.lease

    def liveness(self, agent: str) -> str:
        return EVASIVE if agent in self.evasive else ALIVE

    def busy(self, agent: str) -> bool:
        """Does ``agent`` hold a claim that makes it busy (a task)?"""
        return self.claims.is_busy(agent)

    def queue(self, record: dict[str, Any]) -> None:
        """Put the agent in the idle queue or take it out, as its record and claims say."""
        if record["state"] == IDLE and not self.busy(record["id"]):
            self.idle.add(record["id"], record["idle_order"])
        else:
            self.idle.remove(record["id"])

    def _placed(self, record: dict[str, Any]) -> dict[str, Any]:
        """What a registration event says of presence: the stored state (a registering agent
        holds no task unless it re-registers) and the place in the idle queue."""
        return {"state": BUSY if record["state"] == IDLE and self.busy(record["id"]) else record["state"],
                "position": self.idle.position(record["id"]), "since": record["since"],
                "metadata": record["metadata"], "registered": record["registered"]}

    # ------------------------------------------------------------ leases and liveness
    def _beat(self, b: Batch, record: dict[str, Any]) -> None:
        """The agent was heard from: its evasive deadline moves, and an evasive agent is
        alive again."""
        agent = record["id"]
        self.deadlines.set(Due.EVASIVE, agent, record["ttl"] * protocol.EVASIVE_AFTER, b.now.mono)
        if agent in self.evasive:
            self.evasive.discard(agent)
            self.log.emit(b, "agent.alive", {"agent": agent, "liveness": ALIVE})

    def ensure(self, b: Batch, agent: str, ttl: float | None) -> dict[str, Any]:
        """The agent's record; an agent acting without registering gets a lease of its own."""
        record = self.get(b.txn, agent)
        if record is None:
            record = self._new(b, agent, [], {}, ttl or self.settings.default_ttl, implicit=True)
            self.put(b, record)
            self.deadlines.set(Due.LEASE, agent, record["ttl"], b.now.mono)
            self._beat(b, record)
            self.queue(record)
            self.log.emit(b, "agent.registered", {"agent": agent, "lease": record["lease"],
                                                  "ttl": record["ttl"], "implicit": True,
                                                  **self._placed(record)})
        else:
            self.touch(b, record, ttl)
        return record

    def touch(self, b: Batch, record: dict[str, Any], at_least: float | None = None) -> None:
        """Renew the lease for at least its TTL (or ``at_least``, when longer)."""
        self.deadlines.extend(Due.LEASE, record["id"], max(record["ttl"], at_least or 0.0), b.now.mono)
        self._beat(b, record)

    def evade(self, b: Batch, agent: str) -> None:
        """The agent missed a heartbeat period (Due.EVASIVE came due)."""
        self.deadlines.drop(Due.EVASIVE, agent)
        if agent in self.deadlines.lease and agent not in self.evasive:
            self.evasive.add(agent)
            remaining = self.lease_remaining(agent, b.now)
            self.log.emit(b, "agent.evasive", {"agent": agent, "liveness": EVASIVE,
                                               "expires_in": None if remaining is None else round(remaining, 3)})

    def end(self, b: Batch, agent: str, reason: str) -> list[str]:
        """The lease is over (``lease_expired``, ``unregistered`` or ``admin_released``):
        release every claim, forget the agent."""
        released = self.claims.release_all(b, agent, reason)
        b.txn.delete("agents", agent_key(agent))
        self.deadlines.drop(Due.LEASE, agent)
        self.deadlines.drop(Due.EVASIVE, agent)
        self.evasive.discard(agent)
        self.idle.remove(agent)
        for hook in self.on_end:
            hook(b, agent)
        topic = "agent.expired" if reason == "lease_expired" else "agent.unregistered"
        body: dict[str, Any] = {"agent": agent, "released": released}
        if reason == "lease_expired":
            body["liveness"] = GONE
        elif reason != "unregistered":  # an admin ended it (core/admin.py)
            body["reason"] = reason
        self.log.emit(b, topic, body)
        return released

    def restart(self, txn: Txn, now: Now) -> None:
        """Make the volatile state agree with the stored agents (claims loaded first): a
        lease the store no longer has goes, a missing one starts afresh with a full TTL, a
        running one is kept; the idle queue is rebuilt from the records."""
        agents = {record["id"]: record for record in self.records(txn)}
        for agent in [a for a in self.deadlines.lease if a not in agents]:
            self.deadlines.drop(Due.LEASE, agent)
            self.deadlines.drop(Due.EVASIVE, agent)
        self.evasive &= set(agents)
        self.idle.clear()
        for agent, record in agents.items():
            if agent not in self.deadlines.lease:
                self.deadlines.set(Due.LEASE, agent, record["ttl"], now.mono)
            if agent not in self.deadlines.evasive and agent not in self.evasive:
                self.deadlines.set(Due.EVASIVE, agent, record["ttl"] * protocol.EVASIVE_AFTER, now.mono)
            self.queue(record)

    # ------------------------------------------------------------ ops
    def register(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        agent = body["agent"]
        ttl = body["ttl"] or self.settings.default_ttl
        record = self.get(b.txn, agent)
        if record is None:
            record = self._new(b, agent, body["capabilities"], body["metadata"], ttl)
        else:
            record.update(capabilities=body["capabilities"], metadata=body["metadata"], ttl=ttl,
                          implicit=False)
            if b.key is not None:  # a keyless record (made with security off) is bound now
                record["key"] = b.key
        if body.get("groups") is not None:
            record["groups"] = sorted(body["groups"])
        self.put(b, record)
        self.deadlines.set(Due.LEASE, agent, ttl, b.now.mono)
        self._beat(b, record)
        self.queue(record)
        self.log.emit(b, "agent.registered", {"agent": agent, "lease": record["lease"], "ttl": ttl,
                                              "capabilities": record["capabilities"],
                                              **self._placed(record)})
        return {"agent": agent, "lease": record["lease"], "ttl": ttl}

    def heartbeat(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        agent = body["agent"]
        record = self.get(b.txn, agent)
        if record is None or (body["lease"] is not None and body["lease"] != record["lease"]):
            raise LeaseExpired(f"agent '{agent}' has no live lease; register again",
                               {"agent": agent})
        self.deadlines.set(Due.LEASE, agent, record["ttl"], b.now.mono)
        self._beat(b, record)
        return {"agent": agent, "lease": record["lease"], "ttl": record["ttl"]}

    def unregister(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        agent = body["agent"]
        if self.get(b.txn, agent) is None:
            raise NotFound(f"no agent '{agent}'", {"agent": agent})
        return {"agent": agent, "released": self.end(b, agent, "unregistered")}
