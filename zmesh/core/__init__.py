"""The broker's state machine: tasks, claims, leases and agents. No sockets, no clock, no
LMDB: every batch of requests runs in a :class:`Batch` holding the transaction to work in
and ``now`` from the caller.

Rules the tests hold the machine to (each module states the rules it keeps in detail):

* One write transaction per batch; every change appends an event with a gap-free
  sequence number in the same transaction (eventlog); the broker publishes after commit.
* Handlers check everything before they write, so a refused request changes nothing.
* Claims are one machinery for every kind of resource (claims): exactly one winner per
  conflict, fencing tokens that only increase, each claim hanging on its agent's lease
  (agents) and optionally a TTL of its own. Tasks are the first kind (tasks); how a task
  claim ended is what a refusal explains (endings).
* Deadlines are volatile (deadlines): heartbeats write nothing, and after a restart
  :meth:`Core.recover` gives every lease and claim its full TTL again.
* The layout of every table and key is stated once (schema).
* Every request the ``audit`` setting names is recorded in the audit trail (audit), in the
  batch's transaction, refused ones included: a refused request writes its record and
  nothing else.

:class:`Core` is the front: it wires the parts, dispatches ops, runs expiry and recovery,
and answers :meth:`Core.inspect` for tests, metrics and dashboards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .. import protocol
from ..errors import RemoteError
from .admin import Admin
from .agents import Agents
from .audit import Audit
from .blockers import Blockers
from .claims import ClaimKind, Claims
from .context import DEFERRED, Batch, Now, Settings
from .deadlines import Deadlines, Due
from .deliveries import Deliveries, Push
from .eventlog import EventLog, all_counters, counter, read_counter
from .identity import Identity
from .messages import Messages
from .presence import Presence
from .reservations import Reservations
from .tasks import HISTORY_LIMIT, TRANSITIONS, Tasks

if TYPE_CHECKING:
    from ..protocol import Event
    from ..store.base import Txn

__all__ = ["Batch", "ClaimKind", "Core", "CoreState", "DEFERRED", "HISTORY_LIMIT", "Now", "Push", "Recovery",
           "Settings", "TRANSITIONS"]


@dataclass(frozen=True)
class Recovery:
    """What :meth:`Core.recover` found and did, for the broker's start log."""

    agents: int  #: leases restarted with a full TTL
    claims: int  #: claims held (each keeps its resource; claim TTLs restarted too)
    claim_index: bool  #: True: a clean shutdown's claim index was read; False: every claim kind was scanned
    trimmed_events: int  #: old events dropped to fit event_log_size
    moved_claims: int  #: schema-3 task claims moved from the claims table next to their task
    trimmed_audit: int = 0  #: old audit records dropped to fit audit_retention


@dataclass(frozen=True)
class CoreState:
    """The volatile state and the counters, as :meth:`Core.inspect` reports them."""

    leases: dict[str, float]  #: agent -> lease deadline (monotonic seconds)
    evasive_at: dict[str, float]  #: agent -> when it turns evasive unless heard from
    evasive: list[str]  #: agents that missed a heartbeat period, sorted
    idle_queue: list[str]  #: idle agents in arrival order
    claim_deadlines: dict[str, float]  #: resource key -> the claim's own TTL deadline
    held: dict[str, list[str]]  #: agent -> resource keys it holds, sorted
    queued: int  #: deadline heap entries (live and superseded)
    counters: dict[str, int]  #: seq, token, order, count:<status>


class Core:
    """The state machine. One instance per broker; it owns the volatile deadlines."""

    def __init__(self, settings: Settings | None = None, kinds: Iterable[ClaimKind] = ()) -> None:
        self.settings = settings or Settings()
        self.deadlines = Deadlines()
        self.log = EventLog(self.settings)
        self.claims = Claims(self.deadlines)
        self.agents = Agents(self.settings, self.log, self.deadlines, self.claims)
        self.presence = Presence(self.log, self.agents, self.claims)
        self.blockers = Blockers(self.log, self.agents, self.presence)
        self.tasks = Tasks(self.log, self.claims, self.agents, self.presence, self.blockers)
        self.deliveries = Deliveries(self.log, self.agents, self.claims)
        self.messages = Messages(self.settings, self.log, self.agents, self.tasks, self.deliveries)
        self.reservations = Reservations(self.log, self.agents, self.claims)
        self.admin = Admin(self.log, self.tasks, self.agents, self.claims)
        self.identity = Identity(self.log)
        self.audit = Audit(self.settings)
        self.agents.on_end.append(self.deliveries.forget)
        self.reservations.answered = self.audit.answered
        for kind in kinds:
            self.claims.register(kind)
        self._handlers: dict[str, Callable[[Batch, dict[str, Any]], Any]] = {
            **self.agents.handlers(), **self.presence.handlers(), **self.blockers.handlers(),
            **self.tasks.handlers(), **self.deliveries.handlers(), **self.messages.handlers(),
            **self.reservations.handlers(), **self.admin.handlers(), **self.audit.handlers(),
            "publish": self._publish, "status": self._status, "replay": self.log.replay,
            "snapshot": self._snapshot, "health": self._health,
        }
        # an agent's own client speaks from its connection: the route its pushes take
        for op in ("register", "heartbeat"):
            self._handlers[op] = self._attaching(self._handlers[op])
        missing = set(protocol.OPS) - set(self._handlers) - {"hello"}
        assert not missing, f"ops without a handler: {sorted(missing)}"

    # ------------------------------------------------------------ entry points
    def batch(self, txn: Txn, now: Now) -> Batch:
        """The context for one transaction's requests (make a new one per transaction)."""
        return Batch(txn, now)

    def handle(self, b: Batch, op: str, body: dict[str, Any]) -> tuple[Any, list[Event]]:
        """Apply one validated request. Returns (reply body, events it appended).
        Raises a RemoteError when refused; a refused request has written nothing but its
        audit record."""
        start = len(b.events)
        try:
            if b.key is not None:  # security on: the key's role, and an agent acts only under its own key
                self.identity.check(b, op, body, lambda agent: self.agents.get(b.txn, agent))
            reply = self._handlers[op](b, body)
        except RemoteError as exc:
            self.audit.refused(b, op, body, exc.code)
            raise
        self.audit.done(b, op, body, reply, reply is DEFERRED)
        return reply, b.events[start:]

    def _attaching(self, handler: Callable[[Batch, dict[str, Any]], Any]) -> Callable[[Batch, dict[str, Any]], Any]:
        def attached(b: Batch, body: dict[str, Any]) -> Any:
            reply = handler(b, body)
            if b.caller is not None:
                self.deliveries.attach(b, body["agent"])
            return reply
        return attached

    def undeliverable(self, b: Batch, pushes: list[Push]) -> None:
        """Pushes the transport could not hand over (the agent's connection is gone)."""
        self.deliveries.undeliverable(b, pushes)

    def expire(self, b: Batch) -> list[Event]:
        """Mark agents evasive, release every lease and claim whose deadline has passed,
        trim messages past their age (at most once a second, with whatever batch comes:
        an idle broker has nothing to hurry for), answer waiting reserves whose wait ran
        out and grant those that may go now (their answers in ``b.answers``); returns the
        events."""
        start = len(b.events)
        if b.now.mono >= self.messages.next_sweep:
            self.messages.sweep(b)
        if self.deadlines.any_due(b.now.mono):  # every batch asks: answer without a generator
            for due, key in self.deadlines.due(b.now.mono):
                if due is Due.LEASE:
                    self.agents.end(b, key, "lease_expired")  # type: ignore[arg-type]
                elif due is Due.EVASIVE:
                    self.agents.evade(b, key)  # type: ignore[arg-type]
                elif due is Due.WAIT:
                    self.reservations.gave_up(b, key)  # type: ignore[arg-type]
                else:
                    self.claims.expire(b, key)  # type: ignore[arg-type]
        if self.reservations.freed:  # a reservation ended or a waiter left: the queue may move
            self.reservations.retry(b)
        return b.events[start:]

    def last_seq(self, txn: Txn) -> int:
        """The latest event's seq, in a transaction no batch is writing to."""
        return read_counter(txn, b"seq")

    def seq(self, b: Batch) -> int:
        """The latest event's seq as this batch sees it (counters are stored at commit)."""
        return counter(b, b"seq")

    def next_deadline(self) -> float | None:
        """When expire() next has work (may be early, never late)."""
        return self.deadlines.next()

    def recover(self, txn: Txn, now: Now) -> Recovery:
        """After a (re)start: every lease and every claim TTL starts afresh; no agent has a
        route until its client speaks. Returns what it found and did, for the broker's start
        log."""
        self.deadlines.clear()
        self.deliveries.routes.clear()
        self.reservations.waiting.clear()  # waiting requests did not survive: clients retry
        b = self.batch(txn, now)
        trimmed = self.log.trim(b)
        trimmed_audit = self.audit.trim(b)
        moved = self.tasks.move_legacy_claims(txn)
        indexed = self.claims.indexed(txn)
        self.resync(txn, now, indexed)
        return Recovery(agents=self.agents.count(), claims=self.claims.count(),
                        claim_index=indexed is not None, trimmed_events=trimmed, moved_claims=moved,
                        trimmed_audit=trimmed_audit)

    def resync(self, txn: Txn, now: Now, claims: Iterable[tuple[bytes, bytes]] | None = None) -> None:
        """Make the volatile indexes agree with the store again: after a start (recover has
        emptied them, so every lease and claim TTL starts afresh), or after a batch was
        rolled back, whose in-memory changes the store no longer has (an agent it added, a
        lease or claim TTL its expiry used up). A deadline still held is kept; a missing
        one starts afresh at ``now``. Without ``claims`` (every resource key and claim
        record) it reads every claim kind's records."""
        self.claims.load(self.claims.records(txn) if claims is None else claims, now)
        self.agents.restart(txn, now)
        # a route learned in a rolled-back batch would stop its pending messages from going
        # out: every agent is attached again by its next heartbeat
        self.deliveries.routes.clear()

    def checkpoint(self, txn: Txn) -> None:
        """On a clean shutdown: record which resources are claimed, so the next start reads
        those claims instead of every task (recover)."""
        self.claims.checkpoint(txn)

    def lease_remaining(self, agent: str, now: Now) -> float | None:
        return self.agents.lease_remaining(agent, now)

    def inspect(self, txn: Txn) -> CoreState:
        """Leases, claims held, deadlines and counters: what tests, metrics and the
        dashboard read instead of private fields."""
        return CoreState(
            leases=dict(self.deadlines.lease),
            evasive_at=dict(self.deadlines.evasive),
            evasive=sorted(self.agents.evasive),
            idle_queue=self.agents.idle.agents(),
            claim_deadlines={k.decode(): v for k, v in self.deadlines.claim.items()},
            held={agent: sorted(k.decode() for k in keys) for agent, keys in self.claims.held.items()},
            queued=self.deadlines.queued(),
            counters=all_counters(txn),
        )

    # ------------------------------------------------------------ ops of the core itself
    def _publish(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        """A broadcast is an event and nothing else: one log record, no task or agent
        state (the sender is a label; publishing neither registers nor renews an agent)."""
        topic = protocol.MESSAGE_PREFIX + body["topic"]
        event = self.log.emit(b, topic, {"data": body["data"], "from": body["agent"]})
        return {"topic": topic, "seq": event.seq}

    def _snapshot(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        """One reply at one seq: the agents, the idle queue, open blockers, task counts."""
        agents = self.presence.agent_list(b, {})
        blockers = self.blockers.list_op(b, {"status": protocol.BlockerStatus.OPEN, "after": "",
                                             "limit": protocol.MAX_INT})
        counts = {s: counter(b, b"count:" + s.encode()) for s in protocol.STATUSES}
        return {"agents": agents["agents"], "idle_queue": agents["idle_queue"],
                "blockers": blockers["blockers"], "tasks": counts, "seq": counter(b, b"seq")}

    def _health(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        """The core's part of the health op (the broker adds the store's, the disk's and its own)."""
        return {"seq": counter(b, b"seq")}

    def _status(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        counts = {s: counter(b, b"count:" + s.encode()) for s in protocol.STATUSES}
        # agents and claims are counted from the volatile indexes, which mirror the tables
        return {"tasks": counts, "agents": self.agents.count(), "claims": self.claims.count(),
                **self.presence.summary(b.txn), "blockers": self.blockers.count_open(b.txn),
                "seq": counter(b, b"seq"), "token": counter(b, b"token")}
