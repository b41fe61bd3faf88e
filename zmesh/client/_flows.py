"""The client's multi-step flows with no I/O, written once and run by both drivers: the
lease (connect, keepalive, the heartbeat loop), a request that waits for its reply message,
``receive``, adding message receivers, watching a task's stream.

Rules this module keeps:

* A flow is a generator: it yields actions, is sent each answer (a failure is thrown into
  it at the yield), and what it returns is the method's result. It does no I/O and reads
  no socket; what it needs of its client it reads through :class:`Link`.
* The drivers (``Client._flow``, ``AsyncClient._flow``) answer, doing only the I/O:

  - a :class:`Call`: the request (``_call``): its result, or its error thrown in;
  - :class:`Invoke` ``(fn, args, kwargs)``: ``fn(*args, **kwargs)``, a function of the
    driver's, the API's or the application's; the async driver awaits what it returns;
  - :class:`Sleep` ``(seconds)``: wait that long, less when the client closes: True when
    it closed (the flow then ends, or raises what it was waiting out);
  - :class:`WaitFor` ``(pending, timeout)``: wait until ``pending`` has its message or
    the timeout passes (answer: the message or None);
  - :class:`AwaitPush` ``(seconds)``: wait up to that long for pushes to be routed to the
    inbox (answer: False when the client closed meanwhile).

* The lease (:class:`LeaseState`): an agent's client registers before its first other
  request, with its own TTL, capabilities and metadata; a lapsed lease is registered again
  and ``on_lease_lost`` told (its claims are gone); the heartbeat renews it every
  ``interval`` and reports a failure to ``on_heartbeat_error``, never stopping for one.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .. import protocol
from ..errors import BadRequest, LeaseExpired, NoReply, ZmeshError
from ._checks import check_field, check_timeout, names
from ._inbox import Inbox, Message, Pending, Receiver
from ._protocol import Call, _identity

if TYPE_CHECKING:
    from ..protocol.records import Hello, Lease

log = logging.getLogger("zmesh.client")

T = TypeVar("T")


@dataclass(slots=True)
class Invoke:
    """Call ``fn(*args, **kwargs)`` (awaiting its result in the async driver); answer: the
    result."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Sleep:
    """Wait this many seconds, or until the client closes (answer: True if it closed)."""

    seconds: float


@dataclass(slots=True)
class WaitFor:
    """Wait up to ``timeout`` seconds for ``pending``'s message (answer: it, or None)."""

    pending: Pending
    timeout: float


@dataclass(slots=True)
class AwaitPush:
    """Wait up to ``seconds`` (None: no limit) for pushes to reach the inbox (answer: False
    when the client closed meanwhile)."""

    seconds: float | None


#: a flow of calls and waits: returns its result
Flow = Generator[Any, Any, T]


class DriverHooks:
    """What the shared API classes ask of a driver (Client, AsyncClient override each; the
    async ones return awaitables, which _dual.py tells the type checker)."""

    agent: str | None

    def _call(self, call: Call[T]) -> T:  # pragma: no cover - drivers override
        raise NotImplementedError

    def _flow(self, flow: Flow[T]) -> T:  # pragma: no cover - drivers override
        raise NotImplementedError

    def _stream(self, flow: Generator[Any, Any, None]) -> Iterator[Any]:  # pragma: no cover - drivers override
        raise NotImplementedError

    def _background(self, flow: Generator[Any, Any, None], name: str) -> Any:  # pragma: no cover
        raise NotImplementedError

    def _agent(self, agent: str | None) -> str:
        name = self.agent if agent is None else agent
        if name is None:
            raise BadRequest("this call needs an agent: pass agent=... here or to the client",
                             {"field": "agent"})
        return name


class Link(Protocol):
    """What a flow reads of its client, the same in both drivers: where its requests go
    now, the last hello, its inbox, whether it is closing; and the driver functions a flow
    has Invoked (``_receiving``: connect and read pushes; ``_dispatch_all``: run callbacks)."""

    agent: str | None
    info: Hello
    _inbox: Inbox

    @property
    def endpoint(self) -> str: ...

    def _is_closing(self) -> bool: ...

    def _receiving(self, what: str, pump: bool = True) -> Any: ...

    def _dispatch_all(self, targets: list[tuple[Callable[[Message], Any], Message]]) -> None: ...

    # the API's methods a flow Invokes (their types are _dual.py's: read-only here)
    @property
    def hello(self) -> Callable[[], Any]: ...

    @property
    def snapshot(self) -> Callable[[], Any]: ...

    @property
    def on_message(self) -> Callable[..., Any]: ...

    @property
    def send(self) -> Callable[..., Any]: ...

    @property
    def join(self) -> Callable[..., Any]: ...


class LeaseState:
    """What the client knows of its own lease; shared by both heartbeat loops. The
    constructor checks the agent's settings as the broker will, so a bad ttl or capability
    list fails where the client is made, not on first use."""

    def __init__(self, agent: str | None, capabilities: Iterable[str], metadata: dict[str, Any] | None,
                 ttl: float | None) -> None:
        if agent is not None:
            check_field("register", "agent", agent)
        caps = names("capabilities", capabilities) or []
        self.agent = agent
        self.capabilities = check_field("register", "capabilities", caps)
        self.metadata = check_field("register", "metadata", {} if metadata is None else metadata)
        self.ttl = None if ttl is None else check_field("register", "ttl", ttl)
        self.lease: int | None = None
        self.lost = 0

    def register_call(self) -> Call[Lease]:
        return Call("register", {"agent": self.agent, "capabilities": self.capabilities,
                                 "metadata": self.metadata, "ttl": self.ttl}, _identity)

    def registered(self, body: Lease) -> None:
        self.lease = body["lease"]
        self.ttl = body["ttl"]

    def heartbeat_call(self) -> Call[Lease]:
        return Call("heartbeat", {"agent": self.agent, "lease": self.lease}, _identity)

    @property
    def interval(self) -> float:
        return max(0.05, (self.ttl or 30.0) * protocol.HEARTBEAT_EVERY)

    # ------------------------------------------------------------ flows
    def connect_flow(self, link: Link) -> Flow[None]:
        """hello (kept as ``link.info``), then, for an agent, register with the client's
        own lease settings."""
        link.info = yield Invoke(link.hello)  # the method: a subclass or a test may wrap it
        if self.agent:
            self.registered((yield self.register_call()))

    def keepalive_flow(self, connected: bool, connect: Callable[[], Any],
                       on_lease_lost: Callable[[ZmeshError], Any] | None) -> Flow[None]:
        """Renew the lease now (a client not connected yet connects, which registers). A
        lapsed lease is registered again after ``on_lease_lost`` is told."""
        if not connected:
            yield Invoke(connect)
            return
        try:
            yield self.heartbeat_call()
        except LeaseExpired as exc:
            self.lost += 1
            log.warning("lease of %s lapsed; its claims were released; registering again", self.agent)
            if on_lease_lost:
                yield Invoke(on_lease_lost, (exc,))
            self.registered((yield self.register_call()))

    def heartbeat_flow(self, keepalive: Callable[[], Any],
                       on_error: Callable[[ZmeshError], Any] | None) -> Flow[None]:
        """Every ``interval`` until the client closes: ``keepalive()``; a failure is logged
        and told to ``on_error``, and the next beat comes all the same."""
        while not (yield Sleep(self.interval)):
            try:
                yield Invoke(keepalive)
            except ZmeshError as exc:
                log.warning("heartbeat of %s failed: %s", self.agent, exc)
                if on_error:
                    yield Invoke(on_error, (exc,))


def request_flow(link: Link, agent: str, subject: str, body: Any, timeout: Any,
                 options: dict[str, Any]) -> Flow[Message]:
    """Send a ``request`` to ``agent`` and wait for the reply carrying its correlation id:
    NoReply after ``timeout``. A reply that comes later is not lost: once the wait is over
    it goes to the receivers, or receive()."""
    timeout = check_timeout("timeout", timeout)
    yield Invoke(link._receiving, ("request",))
    cid = uuid.uuid4().hex
    pending = link._inbox.expect(cid)  # before the send: a fast reply must find it
    try:
        # as send(..., **options) would: a duplicate keyword is a TypeError
        sent = yield Invoke(link.send, (subject, body), dict(to=agent, type="request", correlation_id=cid, **options))
        reply = yield WaitFor(pending, timeout)
        if reply is None:
            raise NoReply(f"no reply from agent '{agent}' within {timeout:g} s (request {sent['id']}, "
                          f"correlation id {cid})", {"agent": agent, "id": sent["id"], "correlation_id": cid})
        return reply
    finally:
        link._inbox.forget(cid)


def receive_flow(link: Link, timeout: Any, clock: Callable[[], float] = time.monotonic) -> Flow[Message | None]:
    """The next pushed message no receiver took, waiting up to ``timeout`` seconds (None:
    until one comes); None when none came or the client closed."""
    timeout = check_timeout("timeout", timeout, allow_none=True)
    yield Invoke(link._receiving, ("receive", False))  # read in this call: no push thread
    deadline = None if timeout is None else clock() + timeout
    while True:
        msg = link._inbox.take()
        if msg is not None:
            return msg
        left = None if deadline is None else deadline - clock()
        if left is not None and left <= 0:
            return None
        if not (yield AwaitPush(left)):
            return None


def receiver_flow(link: Link, callback: Callable[[Message], Any], filter: Any, tasks: bool,
                  what: str) -> Flow[Receiver]:
    """A new receiver (on_message, on_task); the buffered messages it matches are
    dispatched to it first."""
    yield Invoke(link._receiving, (what,))
    receiver, backlog = link._inbox.add(callback, filter, tasks)
    if backlog:
        yield Invoke(link._dispatch_all, ([(callback, msg) for msg in backlog],))
    return receiver


def watch_task_flow(link: Link, task: str, callback: Callable[[Message], Any]) -> Flow[Receiver]:
    """Receive what is streamed for ``task``: a receiver of its group, then join it."""
    yield Invoke(link._receiving, ("watch_task",))
    group = f"task:{task}"
    receiver = yield Invoke(link.on_message, (callback, {"group": group}))
    yield Invoke(link.join, (group,))
    return receiver
