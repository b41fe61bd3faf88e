"""Agents and their leases.

Rules it keeps:

* An agent exists while its lease does: ``register`` (or any request from an unknown agent,
  which gets an implicit lease of its own TTL) creates it, and it ends by ``unregister``
  or when it sends nothing for its TTL. Its lease id comes from the fencing-token counter,
  so a lease id is never reused.
* Any request from an agent renews its lease (as a ZooKeeper session is); ``heartbeat``
  does nothing else and writes nothing to disk (deadlines are volatile).
* When a lease ends every claim it holds is released first (claims.Claims.release_all),
  then the record goes and ``agent.expired`` / ``agent.unregistered`` names the released
  resources.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import LeaseExpired, NotFound
from .claims import Claims
from .context import Batch, Now, Settings
from .deadlines import Deadlines, Due
from .eventlog import EventLog, bump, counter
from .schema import agent_key, dumps, loads

Handler = Callable[[Batch, dict[str, Any]], Any]


class Agents:
    """The agents table and the lease deadlines."""

    def __init__(self, settings: Settings, log: EventLog, deadlines: Deadlines, claims: Claims) -> None:
        self.settings = settings  # read at each use, as the event log does
        self.log = log
        self.deadlines = deadlines
        self.claims = claims

    def handlers(self) -> dict[str, Handler]:
        return {"register": self.register, "heartbeat": self.heartbeat,
                "unregister": self.unregister, "agent_list": self.agent_list}

    # ------------------------------------------------------------ records
    @staticmethod
    def get(txn: Any, agent: str) -> dict[str, Any] | None:
        raw = txn.get("agents", agent_key(agent))
        return None if raw is None else loads(raw)

    @staticmethod
    def put(b: Batch, record: dict[str, Any]) -> None:
        b.txn.put("agents", agent_key(record["id"]), dumps(record))

    @staticmethod
    def _new(agent: str, caps: list[str], metadata: dict[str, Any], ttl: float, lease: int,
             now: Now, implicit: bool = False) -> dict[str, Any]:
        return {"id": agent, "capabilities": caps, "metadata": metadata, "ttl": ttl,
                "lease": lease, "registered": now.wall, "implicit": implicit,
                "completed": 0, "failed": 0}

    def lease_remaining(self, agent: str, now: Now) -> float | None:
        return self.deadlines.remaining(Due.LEASE, agent, now.mono)

    def count(self) -> int:
        return len(self.deadlines.lease)

    # ------------------------------------------------------------ leases
    def ensure(self, b: Batch, agent: str, ttl: float | None) -> dict[str, Any]:
        """The agent's record; an agent acting without registering gets a lease of its own."""
        record = self.get(b.txn, agent)
        if record is None:
            record = self._new(agent, [], {}, ttl or self.settings.default_ttl, bump(b, b"token"), b.now,
                               implicit=True)
            self.put(b, record)
            self.log.emit(b, "agent.registered", {"agent": agent, "lease": record["lease"],
                                                  "ttl": record["ttl"], "implicit": True})
            self.deadlines.set(Due.LEASE, agent, record["ttl"], b.now.mono)
        else:
            self.touch(record, b.now, ttl)
        return record

    def touch(self, record: dict[str, Any], now: Now, at_least: float | None = None) -> None:
        """Renew the lease for at least its TTL (or ``at_least``, when longer)."""
        self.deadlines.extend(Due.LEASE, record["id"], max(record["ttl"], at_least or 0.0), now.mono)

    def end(self, b: Batch, agent: str, reason: str) -> list[str]:
        """The lease is over (``lease_expired`` or ``unregistered``): release every claim,
        forget the agent."""
        released = self.claims.release_all(b, agent, reason)
        b.txn.delete("agents", agent_key(agent))
        self.deadlines.drop(Due.LEASE, agent)
        topic = "agent.expired" if reason == "lease_expired" else "agent.unregistered"
        self.log.emit(b, topic, {"agent": agent, "released": released})
        return released

    def restart(self, txn: Any, now: Now) -> None:
        """Make the lease deadlines agree with the stored agents: one the store no longer
        has goes, a missing one starts afresh with a full TTL, a running one is kept."""
        agents = {bytes(key).decode(): raw for key, raw in txn.scan("agents")}
        for agent in [a for a in self.deadlines.lease if a not in agents]:
            self.deadlines.drop(Due.LEASE, agent)
        for agent, raw in agents.items():
            if agent not in self.deadlines.lease:
                self.deadlines.set(Due.LEASE, agent, loads(raw)["ttl"], now.mono)

    # ------------------------------------------------------------ ops
    def register(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        agent = body["agent"]
        ttl = body["ttl"] or self.settings.default_ttl
        record = self.get(b.txn, agent)
        if record is None:
            record = self._new(agent, body["capabilities"], body["metadata"], ttl, bump(b, b"token"), b.now)
        else:
            record.update(capabilities=body["capabilities"], metadata=body["metadata"], ttl=ttl,
                          implicit=False)
        self.put(b, record)
        self.log.emit(b, "agent.registered", {"agent": agent, "lease": record["lease"], "ttl": ttl,
                                              "capabilities": record["capabilities"]})
        self.deadlines.set(Due.LEASE, agent, ttl, b.now.mono)
        return {"agent": agent, "lease": record["lease"], "ttl": ttl}

    def heartbeat(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        agent = body["agent"]
        record = self.get(b.txn, agent)
        if record is None or (body["lease"] is not None and body["lease"] != record["lease"]):
            raise LeaseExpired(f"agent '{agent}' has no live lease; register again",
                               {"agent": agent})
        self.deadlines.set(Due.LEASE, agent, record["ttl"], b.now.mono)
        return {"agent": agent, "lease": record["lease"], "ttl": record["ttl"]}

    def unregister(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        agent = body["agent"]
        if self.get(b.txn, agent) is None:
            raise NotFound(f"no agent '{agent}'", {"agent": agent})
        return {"agent": agent, "released": self.end(b, agent, "unregistered")}

    def agent_list(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        agents = []
        for _, raw in b.txn.scan("agents"):
            record = loads(raw)
            remaining = self.lease_remaining(record["id"], b.now)
            record["expires_in"] = None if remaining is None else round(remaining, 3)
            agents.append(record)
        return {"agents": agents, "seq": counter(b, b"seq")}
