"""What one batch of requests works in: the transaction, the clock, and what it produced.

Rules it keeps:

* A :class:`Batch` lives exactly as long as one transaction. The broker makes a new one for
  every transaction, including a batch applied again after a rollback, so nothing cached
  here (the counters) can outlive the data it was read from.
* ``now`` is read once per batch by the caller: every request in it sees the same clock.
* Events are appended in order, each with the next seq; the broker publishes them after
  the commit. Handlers check before they write, so a refused request adds none (an event
  is never taken back: its seq is already in the log).
* ``caller`` is the identity the transport vouched for (none until security lands);
  ``pushes`` collects direct deliveries the same way ``events`` collects broadcasts.
* A request may wait (a reserve with ``wait_s``): its handler returns :data:`DEFERRED`, and
  the answer comes in a later batch's ``answers`` as (``ticket``, reply body or
  RemoteError). ``request_id`` and ``ticket`` are the current request's id and where its
  answer goes, set by the broker per request and opaque to the core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..protocol.fields import DEFAULT_ACK_WAIT_S, DEFAULT_AUDIT_RETENTION, DEFAULT_MESSAGE_MAX_AGE_S, DEFAULT_MESSAGE_RETENTION

if TYPE_CHECKING:  # the store imports core.schema: no runtime import back
    from ..protocol import Event
    from ..store.base import Txn


#: a handler's reply meaning "no answer yet": the request waits, its answer comes later
DEFERRED: Any = type("Deferred", (), {"__repr__": lambda self: "DEFERRED"})()


@dataclass(slots=True)  # one per request: a frozen one costs a setattr call per field
class Now:
    """The caller's clock, read once per batch: ``mono`` for deadlines, ``wall`` for records."""

    mono: float
    wall: float


@dataclass
class Settings:
    """The core's knobs (the broker's config fills them). Read at each use."""

    default_ttl: float = 30.0
    event_log_size: int = 100_000
    #: seconds a requires_ack delivery waits for its ack when the message names none
    ack_wait: float = DEFAULT_ACK_WAIT_S
    #: messages kept per address, and how long a settled one is kept (seconds)
    message_retention: int = DEFAULT_MESSAGE_RETENTION
    message_max_age: float = DEFAULT_MESSAGE_MAX_AGE_S
    #: what the audit trail records (fields.AUDIT_MODES) and how many records it keeps. The
    #: broker passes the configured mode (config's default: writes); a Core made without it
    #: (core tests, the core benchmark) keeps no trail, so "a refused request writes
    #: nothing" stays checkable on the handlers alone
    audit: str = "off"
    audit_retention: int = DEFAULT_AUDIT_RETENTION


class Batch:
    """The context every handler gets: one transaction's worth of work."""

    __slots__ = ("txn", "now", "events", "pushes", "counters", "written", "caller", "request_id", "ticket",
                 "answers", "key", "role")

    def __init__(self, txn: Txn, now: Now, caller: Any = None) -> None:
        self.txn = txn
        self.now = now
        self.events: list[Event] = []
        self.pushes: list[Any] = []
        #: counters read or written in this transaction (a batch of claims reads the same
        #: four: seq, token and two status counts); see eventlog
        self.counters: dict[bytes, int] = {}
        #: counters changed in this batch: stored once, when the transaction commits (a
        #: batch of claims moves seq and token once per claim, and stores each once)
        self.written: set[bytes] = set()
        self.caller = caller
        self.request_id: bytes | None = None
        self.ticket: Any = None
        #: the current request's authenticated client key (Z85 text) when security is on,
        #: else None (core/identity.py)
        self.key: str | None = None
        #: and the role the allow-list gave that key (agent, observer, admin), else None
        self.role: str | None = None
        #: answers to requests that waited: (their ticket, reply body or RemoteError)
        self.answers: list[tuple[Any, Any]] = []
