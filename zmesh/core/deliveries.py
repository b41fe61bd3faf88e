"""Deliveries: each recipient's copy of a message, its pushes, acks, redelivery and the dead letters.

Delivery states (an inbox entry's ``state``, protocol.DeliveryState) and the only
transitions between them (the table is :data:`TRANSITIONS`; every change goes through
:meth:`Deliveries.transition`)::

    (a new recipient) ──> pending
    pending ──deliver (handed to the agent's live connection)──> delivered
    pending | delivered ──expire (expires_at passed as it would go, or go again)──> expired
    delivered ──undeliverable (the transport refused the push: attempt not counted)──> pending
    delivered ──unacked (ack deadline, reconnect, lease end)──> pending  (deliveries < max_deliver)
    delivered ──unacked──> dead                                         (deliveries == max_deliver)
    dead ──requeue──> pending                                           (deliveries back to 0)
    pending | delivered | dead | expired ──ack──> acked                 (final)

Rules it keeps:

* Every recipient of a message has an inbox entry ``{state, deliveries, delivered_at,
  read_at, acked_at, note}`` (and ``dead_at`` once it was dead). Reading is beside the
  state (``read_at``): delivery, read and ack are separate facts.
* A pending entry is also in the ``pending`` index in priority then arrival order, and is
  pushed in that order as soon as its agent has a live lease and a route.
* A route is the connection an agent's own client speaks from (its ``register`` and
  ``heartbeat`` arrive there): volatile, learned again after a restart from the first
  heartbeat. A new route is a reconnect: every delivery still awaiting its ack is delivered
  again (the old connection may never have seen it), then everything pending goes.
* A delivery of a ``requires_ack`` message is a claim of kind ``dlv`` (claims.py: its token
  comes from the store-wide counter, it hangs on the recipient's lease, its TTL is the
  message's ``ack_wait``). An ack ends it (Claims.end); any other ending (ack deadline,
  reconnect, lease end) makes the entry pending again, or dead once ``deliveries`` reached
  ``max_deliver``. An ack carrying an older delivery's token is refused: stale_token.
* A message without ``requires_ack`` is delivered when it is handed to the agent's
  connection; it can always be read (message_list). A push the transport refused (the
  agent's connection is gone: ROUTER_MANDATORY) comes back through :meth:`undeliverable`
  and the entry is pending again, its attempt not counted.
* Pushes are effects: :class:`Push` records appended to ``Batch.pushes``, sent by the
  broker after the commit, like replies.
* A message record's ``open`` counts its requires_ack recipients not yet settled (acked,
  dead or expired): retention never trims an open message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .. import protocol
from ..errors import BadRequest, NotFound, StaleToken
from ..protocol.states import DeliveryState
from .claims import ClaimKind, Claims
from .context import Batch
from .eventlog import EventLog, bump, counter
from .schema import (DELIVERY, dead_key, delivery_key, dumps, inbox_key, loads, message_id, message_key,
                     message_number, parse_dead_key, parse_delivery_key, parse_pending_key, pending_key)

if TYPE_CHECKING:
    from ..store.base import Txn
    from .agents import Agents

Handler = Callable[[Batch, dict[str, Any]], Any]

# the states bound once (a member looked up on its class costs more than a literal: states.py)
PENDING, DELIVERED, ACKED = DeliveryState.PENDING, DeliveryState.DELIVERED, DeliveryState.ACKED
DEAD, EXPIRED = DeliveryState.DEAD, DeliveryState.EXPIRED
#: a requires_ack recipient in these states is not settled yet (its message is ``open``)
UNSETTLED = (PENDING, DELIVERED)

TRANSITIONS: dict[tuple[str, str], tuple[str, ...]] = {
    (PENDING, "deliver"): (DELIVERED,),
    (PENDING, "expire"): (EXPIRED,),
    (PENDING, "ack"): (ACKED,),
    (DELIVERED, "expire"): (EXPIRED,),
    (DELIVERED, "undeliverable"): (PENDING,),
    (DELIVERED, "unacked"): (PENDING, DEAD),
    (DELIVERED, "ack"): (ACKED,),
    (DEAD, "requeue"): (PENDING,),
    (DEAD, "ack"): (ACKED,),
    (EXPIRED, "ack"): (ACKED,),
}

RANK = {p: i for i, p in enumerate(protocol.PRIORITIES)}
#: message fields a recipient and a reader see (the rest is bookkeeping)
PUBLIC = ("id", "n", "ts", "from", "to", "type", "category", "priority", "subject", "body", "context",
          "tags", "requires_ack", "correlation_id", "expires_at", "ack_wait", "max_deliver")


@dataclass(slots=True)  # one per request: a frozen one costs a setattr call per field
class Push:
    """One message for one agent's connection, sent after the commit."""

    route: Any  #: the connection (the broker's ROUTER identity)
    agent: str
    number: int  #: the message
    token: int | None  #: the delivery's claim token (requires_ack), else None
    priority: str
    ts: float  #: when the message was sent (wall clock), for delivery latency
    raw: bytes  #: the push body, encoded
    live: bool  #: pushed in the batch that stored it (its latency is the broker's own)
    attempt: int = 1  #: which delivery of this message to this agent (above 1: a redelivery)


def view(msg: dict[str, Any]) -> dict[str, Any]:
    """A message as recipients and readers see it."""
    return {k: msg[k] for k in PUBLIC}


def entry_view(entry: dict[str, Any], token: int | None = None) -> dict[str, Any]:
    return {"state": entry["state"], "deliveries": entry["deliveries"], "delivered_at": entry["delivered_at"],
            "read_at": entry["read_at"], "acked_at": entry["acked_at"], "note": entry["note"], "token": token}


def parse_id(message: str, field: str = "id") -> int:
    number = message_number(message)
    if number is None:
        raise BadRequest(f"field '{field}' must be a message id like msg-12", {"field": field})
    return number


class DeliveryKind(ClaimKind):
    """A requires_ack delivery awaiting its ack: one holder (the recipient)."""

    prefix = DELIVERY

    def __init__(self, owner: "Deliveries") -> None:
        self.owner = owner

    def ended(self, b: Batch, key: bytes, claim: dict[str, Any], reason: str) -> None:
        self.owner.unacked(b, key, reason)

    def show(self, key: bytes) -> str:
        number, agent = parse_delivery_key(key)
        return f"{message_id(number)}@{agent}"


class Deliveries:
    """Inbox entries, routes, pushes, acks and dead letters."""

    def __init__(self, log: EventLog, agents: "Agents", claims: Claims) -> None:
        self.log = log
        self.agents = agents
        self.claims = claims
        #: agent -> the connection its client speaks from (volatile)
        self.routes: dict[str, Any] = {}
        #: called before a push with (batch, agent, message): extra context for this
        #: delivery, e.g. the claim a queued assignment takes when it is delivered
        self.prepare: Callable[[Batch, str, dict[str, Any]], dict[str, Any] | None] | None = None
        self.kind = DeliveryKind(self)
        claims.register(self.kind)

    def handlers(self) -> dict[str, Handler]:
        return {"ack": self.ack, "unacked": self.unacked_op, "dead_letters": self.dead_letters,
                "requeue": self.requeue}

    # ------------------------------------------------------------ records
    @staticmethod
    def message(txn: Txn, number: int) -> dict[str, Any] | None:
        raw = txn.get("messages", message_key(number))
        return None if raw is None else loads(raw)

    @staticmethod
    def put_message(b: Batch, msg: dict[str, Any]) -> None:
        b.txn.put("messages", message_key(msg["n"]), dumps(msg))

    @staticmethod
    def entry(txn: Txn, agent: str, number: int) -> dict[str, Any] | None:
        raw = txn.get("inbox", inbox_key(agent, number))
        return None if raw is None else loads(raw)

    @staticmethod
    def _put(b: Batch, agent: str, number: int, entry: dict[str, Any]) -> None:
        b.txn.put("inbox", inbox_key(agent, number), dumps(entry))

    def _pending(self, b: Batch, agent: str, msg: dict[str, Any], on: bool) -> None:
        key = pending_key(agent, RANK[msg["priority"]], msg["n"])
        if on:
            b.txn.put("pending", key, b"")
        else:
            b.txn.delete("pending", key)
        bump(b, b"pending:" + msg["priority"].encode(), 1 if on else -1)

    def _settled(self, b: Batch, msg: dict[str, Any], delta: int = -1) -> None:
        """A requires_ack recipient settled (-1) or was queued again (+1)."""
        if msg["requires_ack"]:
            msg["open"] = max(0, msg["open"] + delta)
            self.put_message(b, msg)

    @staticmethod
    def transition(entry: dict[str, Any], action: str, new: str) -> str:
        """Move an inbox entry to ``new`` by ``action``; returns its old state."""
        old = entry["state"]
        if new not in TRANSITIONS.get((old, action), ()):  # a bug: handlers check the state first
            raise AssertionError(f"illegal delivery transition {old} -{action}-> {new}")
        entry["state"] = new
        return old

    def token(self, number: int, agent: str, txn: Txn) -> int | None:
        claim = self.claims.get(txn, delivery_key(number, agent))
        return None if claim is None else claim["token"]

    # ------------------------------------------------------------ fan-out and push
    def enqueue(self, b: Batch, agent: str, msg: dict[str, Any]) -> bool:
        """A new recipient: its entry is pending, and goes at once if the agent is connected.
        Returns whether it was pushed."""
        entry = {"state": PENDING, "deliveries": 0, "delivered_at": None, "read_at": None,
                 "acked_at": None, "note": None}
        if agent not in self.routes or not self.agents.live(agent):
            self._put(b, agent, msg["n"], entry)
            self._pending(b, agent, msg, True)
            return False
        self.deliver(b, agent, msg, entry, pending=False)
        return True

    def attach(self, b: Batch, agent: str) -> None:
        """The agent's own client spoke (register, heartbeat). A new connection is a
        reconnect: outstanding deliveries go again, then everything pending."""
        route = b.caller
        if route is None or self.routes.get(agent) == route:
            return
        self.routes[agent] = route
        for key in sorted(k for k in self.claims.held.get(agent, ()) if k.startswith(DELIVERY + b":")):
            claim = self.claims.get(b.txn, key)
            if claim is not None:
                self.claims.drop(b, key, claim, "reconnected")
        self.flush(b, agent)

    def forget(self, b: Batch, agent: str) -> None:
        """The agent's lease ended: its route goes with it."""
        self.routes.pop(agent, None)

    def flush(self, b: Batch, agent: str) -> None:
        """Push everything pending for a connected agent, in priority then arrival order."""
        if agent not in self.routes or not self.agents.live(agent):
            return
        keys = [bytes(k) for k, _ in b.txn.scan("pending", prefix=pending_key(agent))]
        for key in keys:
            number = parse_pending_key(key)[1]
            msg, entry = self.message(b.txn, number), self.entry(b.txn, agent, number)
            if msg is None or entry is None or entry["state"] != PENDING:  # cannot happen: heal
                b.txn.delete("pending", key)
                continue
            self.deliver(b, agent, msg, entry)

    def deliver(self, b: Batch, agent: str, msg: dict[str, Any], entry: dict[str, Any],
                pending: bool = True) -> None:
        """Hand one entry to a connected, live agent (a claim on its lease first, for
        requires_ack); ``pending``: it was waiting in the pending index."""
        if pending:
            self._pending(b, agent, msg, False)
        if msg["expires_at"] is not None and msg["expires_at"] <= b.now.wall:
            self._expire(b, agent, msg, entry)
            return
        extra = self.prepare(b, agent, msg) if self.prepare is not None else None
        token = None
        if msg["requires_ack"]:
            record = self.agents.get(b.txn, agent)
            assert record is not None, "deliver() is called for live agents only"
            token = self.claims.grant(b, delivery_key(msg["n"], agent), record, msg["ack_wait"])["token"]
        self.transition(entry, "deliver", DELIVERED)
        entry.update(deliveries=entry["deliveries"] + 1, delivered_at=b.now.wall)
        self._put(b, agent, msg["n"], entry)
        body = view(msg)
        if extra:
            body["context"] = {**body["context"], **extra}
        body["delivery"] = {"agent": agent, "token": token, "attempt": entry["deliveries"]}
        b.pushes.append(Push(self.routes[agent], agent, msg["n"], token, msg["priority"], msg["ts"], dumps(body),
                             live=not pending, attempt=entry["deliveries"]))

    def _expire(self, b: Batch, agent: str, msg: dict[str, Any], entry: dict[str, Any]) -> None:
        self.transition(entry, "expire", EXPIRED)
        self._put(b, agent, msg["n"], entry)
        self._settled(b, msg)

    def undeliverable(self, b: Batch, pushes: list[Push]) -> None:
        """Pushes the transport refused (the connection is gone): the route is forgotten
        and each entry is pending again, the attempt not counted."""
        for push in pushes:
            if self.routes.get(push.agent) == push.route:
                del self.routes[push.agent]
            msg, entry = self.message(b.txn, push.number), self.entry(b.txn, push.agent, push.number)
            if msg is None or entry is None or entry["state"] != DELIVERED:
                continue
            if msg["requires_ack"]:
                key = delivery_key(push.number, push.agent)
                claim = self.claims.get(b.txn, key)
                if claim is None or claim["token"] != push.token:
                    continue  # delivered again since: that delivery stands
                self.claims.end(b, key, push.agent)
            self.transition(entry, "undeliverable", PENDING)
            entry["deliveries"] = max(0, entry["deliveries"] - 1)
            self._put(b, push.agent, push.number, entry)
            self._pending(b, push.agent, msg, True)

    # ------------------------------------------------------------ redelivery
    def unacked(self, b: Batch, key: bytes, reason: str) -> None:
        """A delivery ended without its ack (its ack_wait ran out, the agent reconnected or
        its lease ended): pending again, or a dead letter after max_deliver."""
        number, agent = parse_delivery_key(key)
        msg, entry = self.message(b.txn, number), self.entry(b.txn, agent, number)
        if msg is None or entry is None or entry["state"] != DELIVERED:
            return
        if msg["expires_at"] is not None and msg["expires_at"] <= b.now.wall:
            self._expire(b, agent, msg, entry)
        elif entry["deliveries"] >= msg["max_deliver"]:
            self.transition(entry, "unacked", DEAD)
            entry["dead_at"] = b.now.wall
            self._put(b, agent, number, entry)
            b.txn.put("dead_letters", dead_key(number, agent), b"")
            bump(b, b"dead")
            self._settled(b, msg)
            self.log.emit(b, "message.dead", {"id": msg["id"], "agent": agent, "deliveries": entry["deliveries"],
                                              "from": msg["from"], "reason": reason})
        else:
            self.transition(entry, "unacked", PENDING)
            self._put(b, agent, number, entry)
            self._pending(b, agent, msg, True)
            if reason == "claim_expired":  # the ack deadline: go again now if connected
                self.flush(b, agent)

    # ------------------------------------------------------------ ops
    def ack(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        agent, number, token = body["agent"], parse_id(body["id"]), body["token"]
        msg = self.message(b.txn, number)
        entry = None if msg is None else self.entry(b.txn, agent, number)
        if msg is None or entry is None:
            raise NotFound(f"no message '{body['id']}' for agent '{agent}'", {"id": body["id"], "agent": agent})
        if entry["acked_at"] is not None:
            return {"id": msg["id"], "agent": agent, "acked_at": entry["acked_at"], "note": entry["note"],
                    "already": True}
        key = delivery_key(number, agent)
        current = self.claims.get(b.txn, key)
        if token is not None and (current is None or current["token"] != token):
            now = "no delivery awaits an ack" if current is None else f"the current delivery has token {current['token']}"
            raise StaleToken(f"ack of {msg['id']} carries token {token}, but {now} (it was delivered again)",
                             {"id": msg["id"], "agent": agent, "token": token,
                              "current": None if current is None else current["token"]})
        if current is not None:
            self.claims.end(b, key, agent)
        if entry["state"] == PENDING:
            self._pending(b, agent, msg, False)
        elif entry["state"] == DEAD:
            b.txn.delete("dead_letters", dead_key(number, agent))
            bump(b, b"dead", -1)
        unsettled = entry["state"] in UNSETTLED
        self.transition(entry, "ack", ACKED)
        entry.update(acked_at=b.now.wall, note=body["note"])
        self._put(b, agent, number, entry)
        if unsettled:
            self._settled(b, msg)
        self.log.emit(b, "message.acked", {"id": msg["id"], "agent": agent, "from": msg["from"]})
        return {"id": msg["id"], "agent": agent, "acked_at": entry["acked_at"], "note": entry["note"],
                "already": False}

    def _outstanding(self, b: Batch, agent: str | None) -> Iterator[tuple[int, str, str]]:
        """(message number, agent, state) of every requires_ack delivery not settled."""
        held = self.claims.held_of(DELIVERY)
        found = [(*parse_delivery_key(DELIVERY + b":" + name), DELIVERED) for name in held]
        for key, _ in b.txn.scan("pending", prefix=b"" if agent is None else pending_key(agent)):
            who, number = parse_pending_key(key)
            found.append((number, who, PENDING))
        for number, who, state in sorted(found):
            if agent is None or who == agent:
                yield number, who, state

    def unacked_op(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        out: list[dict[str, Any]] = []
        more = False
        for number, agent, state in self._outstanding(b, body["agent"]):
            msg, entry = self.message(b.txn, number), self.entry(b.txn, agent, number)
            if msg is None or entry is None or not msg["requires_ack"]:
                continue
            if len(out) == body["limit"]:
                more = True
                break
            key = delivery_key(number, agent)
            out.append({"id": msg["id"], "agent": agent, "state": state, "deliveries": entry["deliveries"],
                        "token": self.token(number, agent, b.txn),
                        "expires_in": self.claims.expires_in(key, agent, b.now) if state == DELIVERED else None,
                        "subject": msg["subject"], "priority": msg["priority"], "from": msg["from"]})
        return {"deliveries": out, "more": more}

    def dead_letters(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        out: list[dict[str, Any]] = []
        more = False
        for key, _ in b.txn.scan("dead_letters"):
            number, agent = parse_dead_key(key)
            if body["agent"] is not None and agent != body["agent"]:
                continue
            if len(out) == body["limit"]:
                more = True
                break
            msg, entry = self.message(b.txn, number), self.entry(b.txn, agent, number)
            if msg is None or entry is None:
                continue
            out.append({"id": msg["id"], "agent": agent, "deliveries": entry["deliveries"],
                        "dead_at": entry.get("dead_at"), "subject": msg["subject"], "priority": msg["priority"],
                        "from": msg["from"]})
        return {"dead": out, "more": more}

    def requeue(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        number = parse_id(body["id"])
        msg = self.message(b.txn, number)
        if msg is None:
            raise NotFound(f"no message '{body['id']}'", {"id": body["id"]})
        agents = [body["agent"]] if body["agent"] is not None else [
            parse_dead_key(k)[1] for k, _ in b.txn.scan("dead_letters", prefix=dead_key(number))]
        requeued = []
        for agent in agents:
            entry = self.entry(b.txn, agent, number)
            if entry is None or entry["state"] != DEAD:
                continue
            b.txn.delete("dead_letters", dead_key(number, agent))
            bump(b, b"dead", -1)
            self.transition(entry, "requeue", PENDING)
            entry.update(deliveries=0, dead_at=None)
            self._put(b, agent, number, entry)
            self._pending(b, agent, msg, True)
            self._settled(b, msg, +1)
            requeued.append(agent)
        if not requeued:
            who = f"for agent '{body['agent']}'" if body["agent"] is not None else "for any agent"
            raise NotFound(f"message '{msg['id']}' is not a dead letter {who}", {"id": msg["id"]})
        self.log.emit(b, "message.requeued", {"id": msg["id"], "agents": requeued})
        for agent in requeued:
            self.flush(b, agent)
        return {"id": msg["id"], "requeued": requeued}

    def stats(self, b: Batch) -> dict[str, Any]:
        return {"pending": {p: counter(b, b"pending:" + p.encode()) for p in protocol.PRIORITIES},
                "outstanding": len(self.claims.held_of(DELIVERY)), "dead": counter(b, b"dead")}
