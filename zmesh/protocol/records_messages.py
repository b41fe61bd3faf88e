"""The shapes of the messaging and path-reservation replies: one ``TypedDict`` per record
and per reply body. The rules are records.py's (which re-exports every name here): shapes
only, a key required when every reply carries it, checked against a real broker by
tests/test_records.py.

No I/O and no behaviour: only ``typing``.
"""

from __future__ import annotations

from typing import Any, TypedDict

__all__ = [
    "Acked",
    "Address",
    "Assignment",
    "DeadLetter",
    "DeadLetterPage",
    "Delivery",
    "Grant",
    "Groups",
    "Latency",
    "Marked",
    "MessageDetail",
    "MessagePage",
    "MessageStats",
    "PushDelivery",
    "PushedMessage",
    "Recipient",
    "ReleasedPaths",
    "Requeued",
    "Reservation",
    "ReservationState",
    "Reserved",
    "Sent",
    "StoredMessage",
    "Unacked",
    "UnackedPage",
    "WaitingReserve",
]


# ---------------------------------------------------------------------------- messages
class Address(TypedDict):
    """Who a message was sent to: kind agent, group, capability or all (name None)."""

    kind: str
    name: str | None


#: a message's own fields ("from" is a keyword, hence the functional form)
_MessageFields = TypedDict("_MessageFields", {
    "id": str, "n": int, "ts": float, "from": str | None, "to": Address, "type": str, "category": str,
    "priority": str, "subject": str, "body": Any, "context": dict[str, Any], "tags": list[str],
    "requires_ack": bool, "correlation_id": str | None, "expires_at": float | None, "ack_wait": float,
    "max_deliver": int})


class Delivery(TypedDict):
    """One recipient's delivery of a message: its state (pending, delivered, acked, dead),
    how often it was delivered, when it was read and acked, and the current token."""

    state: str
    deliveries: int
    delivered_at: float | None
    read_at: float | None
    acked_at: float | None
    note: str | None
    token: int | None


class StoredMessage(_MessageFields, total=False):
    """A stored message (``message_list``); read from an agent's inbox it carries that
    agent's ``delivery``."""

    delivery: Delivery


class Recipient(Delivery):
    """A recipient's delivery, named (``message_get``)."""

    agent: str


class MessageDetail(_MessageFields):
    """``message_get``: the message with every recipient's delivery."""

    recipients: list[Recipient]
    #: requires_ack deliveries not settled yet
    open: int


class MessagePage(TypedDict):
    """``message_list``; ``last`` is the number of the last message examined."""

    messages: list[StoredMessage]
    more: bool
    last: int


class PushDelivery(TypedDict):
    """What a push says of its delivery: to whom, with which token, which attempt."""

    agent: str
    token: int | None
    attempt: int


class PushedMessage(_MessageFields):
    """A message as the broker pushes it to an agent (``zmesh.client.Message`` is made of
    it; ``Message.raw`` is this dict)."""

    delivery: PushDelivery


class Sent(TypedDict):
    """``send``: how many live agents it was addressed to and how many got it at once."""

    id: str
    addressed: int
    online: int
    queued: int
    seq: int


class Assignment(TypedDict):
    """``assign``: the claim taken on the agent's lease (None while ``queued``) and the
    message that carries it."""

    task: str
    agent: str
    id: str
    queued: bool
    token: int | None
    lease: int | None
    expires_in: float | None


class Acked(TypedDict):
    """``ack``; ``already`` when an earlier ack answered."""

    id: str
    agent: str
    acked_at: float
    note: str | None
    already: bool


class Marked(TypedDict):
    """``mark_read``: how many were marked, and the ids not in the agent's inbox."""

    agent: str
    marked: int
    unknown: list[str]


Unacked = TypedDict("Unacked", {
    "id": str, "agent": str, "state": str, "deliveries": int, "token": int | None,
    "expires_in": float | None, "subject": str, "priority": str, "from": str | None})
Unacked.__doc__ = "A requires_ack delivery not acked yet: outstanding (delivered) or pending."


class UnackedPage(TypedDict):
    """``unacked``."""

    deliveries: list[Unacked]
    more: bool


DeadLetter = TypedDict("DeadLetter", {
    "id": str, "agent": str, "deliveries": int, "dead_at": float | None, "subject": str,
    "priority": str, "from": str | None})
DeadLetter.__doc__ = "A delivery that reached max_deliver without an ack."


class DeadLetterPage(TypedDict):
    """``dead_letters``."""

    dead: list[DeadLetter]
    more: bool


class Requeued(TypedDict):
    """``requeue``: the recipients whose dead letters go out again."""

    id: str
    requeued: list[str]


class Latency(TypedDict):
    n: int
    p50: float | None
    p95: float | None


class MessageStats(TypedDict):
    """``msgstats``: counts per priority and delivery latency (ms) per priority."""

    pending: dict[str, int]
    outstanding: int
    dead: int
    messages: int
    oldest: float | None
    retention: int
    max_age: float
    latency_ms: dict[str, Latency]


class Groups(TypedDict):
    """``group_join``, ``group_leave``: the agent's groups after it."""

    agent: str
    groups: list[str]


# ---------------------------------------------------------------------------- path reservations
class Grant(TypedDict):
    """One pattern ``reserve`` granted (``renewed``: it was held already)."""

    pattern: str
    mode: str
    token: int
    expires_in: float | None
    renewed: bool


class Reserved(TypedDict):
    """``reserve``: every pattern granted, all on the agent's lease."""

    agent: str
    lease: int
    reservations: list[Grant]


class Reservation(TypedDict):
    """A reservation held now (``reservations``)."""

    pattern: str
    agent: str
    mode: str
    token: int
    since: float
    ttl: float | None
    expires_in: float | None


class WaitingReserve(TypedDict):
    """A reserve waiting in the broker's queue."""

    agent: str
    paths: list[str]
    mode: str
    gives_up_in: float | None


class ReservationState(TypedDict):
    """``reservations``: what is held, and what waits, first come first."""

    reservations: list[Reservation]
    waiting: list[WaitingReserve]


class ReleasedPaths(TypedDict):
    """``release_paths``."""

    agent: str
    released: list[str]
