"""What a client does with the messages the broker pushes to it. No I/O: both drivers feed
pushes in (:meth:`Inbox.route`) and run the callbacks it returns.

Rules it keeps:

* A push is never taken for a reply (ClientCore tells them apart by the frame header) and
  is never dropped silently. It goes to the request waiting for it (a ``reply`` carrying
  its correlation id), else to every receiver whose filter matches (each gets the message:
  several receivers, several copies), else into a bounded buffer that :meth:`Inbox.take`
  (``receive()``) reads. When the buffer is full the oldest is dropped with a warning; the
  broker still has it (``messages()`` reads the store).
* Assignments (``task.assign``) go to task receivers (``on_task``), everything else to
  message receivers (``on_message``).
* A receiver added later first gets the buffered messages it matches, so nothing that
  arrived before it is lost to it.
* Filters are checked when the receiver is added: a dict of message field -> value or
  list of accepted values (``tags``: the message has that tag; ``task``: its context's
  task), or a callable taking the :class:`Message`.
* A request waiting for its reply (:meth:`Inbox.expect`) is registered before the request is
  sent and forgotten when the wait ends, whatever ended it: a reply after that is routed as
  any other push.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgument
from ..protocol.records import ClaimGrant
from ._protocol import Claim, _to_claim

log = logging.getLogger("zmesh.client")

#: pushes kept for receive() when no receiver takes them
BUFFER_LIMIT = 10_000
ASSIGN = "task.assign"
#: what a filter dict may name
FILTER_KEYS = ("type", "category", "priority", "from", "subject", "tags", "correlation_id", "task",
               "group", "requires_ack")


@dataclass(frozen=True)
class Message:
    """A message pushed to this agent (``agent``), as its sender wrote it, with this
    delivery's ``token`` (pass it to ack: an ack of an older delivery is refused) and
    ``attempt`` (1 for the first delivery)."""

    id: str
    sender: str | None
    to: dict[str, Any]
    type: str
    category: str
    priority: str
    subject: str
    body: Any
    context: dict[str, Any]
    tags: list[str]
    requires_ack: bool
    correlation_id: str | None
    ts: float
    expires_at: float | None
    agent: str
    token: int | None
    attempt: int
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Message:
        delivery = body.get("delivery") or {}
        return cls(body["id"], body.get("from"), body.get("to") or {}, body.get("type", "message"),
                   body.get("category", "general"), body.get("priority", "normal"), body.get("subject", ""),
                   body.get("body"), body.get("context") or {}, list(body.get("tags") or ()),
                   bool(body.get("requires_ack")), body.get("correlation_id"), body.get("ts", 0.0),
                   body.get("expires_at"), delivery.get("agent", ""), delivery.get("token"),
                   delivery.get("attempt", 1), body)

    @property
    def task(self) -> str | None:
        """The task this message is about (an assignment's, or a task stream's)."""
        return self.context.get("task")

    @property
    def claim(self) -> Claim | None:
        """An assignment's claim (the broker took it on this agent's lease), else None."""
        if self.type != ASSIGN or self.context.get("token") is None:
            return None
        grant: ClaimGrant = {"task": self.context["task"], "token": self.context["token"], "agent": self.agent,
                             "lease": self.context.get("lease", 0), "expires_in": self.context.get("expires_in"),
                             "task_record": self.context.get("task_record")}  # type: ignore[typeddict-item]  # None: none sent
        return _to_claim(grant)

    def to_json(self) -> dict[str, Any]:
        return dict(self.raw)


def _value(msg: Message, key: str) -> Any:
    if key == "from":
        return msg.sender
    if key == "task":
        return msg.task
    if key == "group":
        return msg.to.get("name") if msg.to.get("kind") == "group" else None
    return getattr(msg, key)


def check_filter(spec: Any) -> Callable[[Message], bool]:
    """A receiver's filter as a predicate; a bad one raises InvalidArgument naming it."""
    if spec is None:
        return lambda msg: True
    if callable(spec):
        return spec  # type: ignore[no-any-return]
    if not isinstance(spec, dict):
        raise InvalidArgument(f"filter must be a dict of message fields or a callable, not {type(spec).__name__}",
                              {"field": "filter"})
    wanted: dict[str, tuple[Any, ...]] = {}
    for key, value in spec.items():
        if key not in FILTER_KEYS:
            raise InvalidArgument(f"filter key {key!r} is not one of {', '.join(FILTER_KEYS)}", {"field": "filter"})
        wanted[key] = tuple(value) if isinstance(value, (list, tuple, set, frozenset)) else (value,)

    def match(msg: Message) -> bool:
        for key, accepted in wanted.items():
            if key == "tags":
                if not any(tag in msg.tags for tag in accepted):
                    return False
            elif _value(msg, key) not in accepted:
                return False
        return True
    return match


class Pending:
    """The reply a request waits for: ``message`` once it came. ``wake`` is the driver's
    (set before it waits, called when the message comes)."""

    __slots__ = ("message", "wake")

    def __init__(self) -> None:
        self.message: Message | None = None
        self.wake: Callable[[], None] | None = None

    def arrived(self, msg: Message) -> None:
        if self.message is None:
            self.message = msg
            wake = self.wake
            if wake is not None:
                wake()


class Receiver:
    """A registered callback; ``cancel()`` stops it."""

    _ids = itertools.count(1)

    def __init__(self, inbox: Inbox, callback: Callable[[Message], Any], match: Callable[[Message], bool],
                 tasks: bool) -> None:
        self.id = next(self._ids)
        self.callback = callback
        self.match = match
        self.tasks = tasks
        self._inbox = inbox

    def cancel(self) -> None:
        self._inbox.remove(self)


class Inbox:
    """Receivers, waiting requests and the buffer; thread-safe (one lock, held briefly)."""

    def __init__(self, limit: int = BUFFER_LIMIT) -> None:
        self.receivers: list[Receiver] = []
        self.waiters: dict[str, Callable[[Message], None]] = {}
        self.buffer: deque[Message] = deque()
        self.limit = limit
        self.dropped = 0
        self.lock = threading.Lock()
        #: notified when the buffer grows (receive() waits on it)
        self.arrived = threading.Condition(self.lock)

    def add(self, callback: Callable[[Message], Any], spec: Any, tasks: bool) -> tuple[Receiver, list[Message]]:
        """A new receiver and the buffered messages it takes over (to be dispatched to it)."""
        if not callable(callback):
            raise InvalidArgument("callback must be callable", {"field": "callback"})
        receiver = Receiver(self, callback, check_filter(spec), tasks)
        with self.lock:
            self.receivers.append(receiver)
            mine = [m for m in self.buffer if self._wants(receiver, m)]
            if mine:
                self.buffer = deque(m for m in self.buffer if not self._wants(receiver, m))
        return receiver, mine

    def remove(self, receiver: Receiver) -> None:
        with self.lock:
            if receiver in self.receivers:
                self.receivers.remove(receiver)

    @staticmethod
    def _wants(receiver: Receiver, msg: Message) -> bool:
        if receiver.tasks != (msg.type == ASSIGN):
            return False
        try:
            return bool(receiver.match(msg))
        except Exception:  # a filter bug must not stop the inbox
            log.exception("message filter failed")
            return False

    def route(self, body: dict[str, Any]) -> list[tuple[Callable[[Message], Any], Message]]:
        """One push: resolve a waiting request, or the callbacks to run, or buffer it."""
        msg = Message.from_wire(body)
        with self.lock:
            if msg.type == "reply" and msg.correlation_id in self.waiters:
                waiter = self.waiters.pop(msg.correlation_id)
            else:
                waiter = None
                targets = [(r.callback, msg) for r in self.receivers if self._wants(r, msg)]
                if targets:
                    return targets
                if len(self.buffer) >= self.limit:
                    dropped = self.buffer.popleft()
                    self.dropped += 1
                    log.warning("push buffer full (%d): dropped %s; it is still in the broker's store",
                                self.limit, dropped.id)
                self.buffer.append(msg)
                self.arrived.notify_all()
                return []
        assert waiter is not None
        waiter(msg)
        return []

    def route_all(self, pushed: list[dict[str, Any]]) -> list[tuple[Callable[[Message], Any], Message]]:
        """:meth:`route` for each push; a malformed one is dropped with a warning."""
        targets = []
        for body in pushed:
            try:
                targets += self.route(body)
            except (KeyError, TypeError) as exc:
                log.warning("malformed push dropped: %s", exc)
        return targets

    def expect(self, correlation_id: str) -> Pending:
        """A reply with this correlation id goes to the returned Pending (until forgotten)."""
        pending = Pending()
        with self.lock:
            self.waiters[correlation_id] = pending.arrived
        return pending

    def forget(self, correlation_id: str) -> None:
        with self.lock:
            self.waiters.pop(correlation_id, None)

    def take(self) -> Message | None:
        with self.lock:
            return self.buffer.popleft() if self.buffer else None
