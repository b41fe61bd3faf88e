"""The ops of the public client API that stream or wait, defined once for both drivers:
``LiveApi`` is Api (_api.py) with them, and is what Client and AsyncClient inherit: event streams and the coordinator's watch, background subscriptions,
message receivers, a request waiting for its reply, receive, keepalive.

Rules: as _api.py's. Each method is its flow (_events.py, _flows.py) handed to the driver:
``_stream`` for what yields (``events``, ``watch``: an iterator of Client, an async iterator
of AsyncClient), ``_background`` for a subscription (a thread of Client, a task of
AsyncClient, running until the client closes), ``_flow`` for the rest. A flow checks its
arguments when it starts: on the first ``next()`` of a stream, when the call runs for the
rest; a subscription checks them here, before its thread or task starts. Callbacks of
AsyncClient may be coroutine functions (they are awaited).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .. import protocol
from ..errors import InvalidArgument, ZmeshError
from ..protocol import Event
from ._api import Api
from ._checks import check_callback
from ._dual import background, op, stream
from ._events import check_flow_args, event_stream, following, subscription, watch_flow
from ._flows import (
    LeaseState,
    receive_flow,
    receiver_flow,
    request_flow,
    watch_task_flow,
)
from ._inbox import Inbox, Message, Receiver
from ._roster import Roster

if TYPE_CHECKING:
    from typing import TypedDict

    from ..protocol.records import Hello

    class TaskUpdate(TypedDict):
        """What subscribe_task_updates hands its callback (made of a task event)."""

        task_id: str | None
        old_status: str | None
        new_status: str | None
        claimed_by: str | None
        timestamp: float | None
        topic: str
        seq: int


class LiveApi(Api):
    """Every op: Api's, and events, watch, subscriptions, receivers, request, receive, keepalive."""

    if TYPE_CHECKING:  # the driver's (a flow's Link, _flows.py)
        connected: bool
        info: Hello
        _inbox: Inbox
        _lease: LeaseState
        _on_lease_lost: Callable[[ZmeshError], Any] | None

        @property
        def endpoint(self) -> str: ...

        def connect(self) -> Any: ...

        def _is_closing(self) -> bool: ...

        def _receiving(self, what: str, pump: bool = True) -> Any: ...

        def _dispatch_all(self, targets: list[tuple[Callable[[Message], Any], Message]]) -> None: ...

    # ------------------------------------------------------------ events
    @stream
    def events(self, topics: Iterable[str] = (), *, since: int | None = None,
               timeout: float | None = None, idle_check: float = 1.0,
               reconnect: bool = True, on_connection: Callable[[bool], None] | None = None
               ) -> Iterator[Event]:
        """Yield events in sequence order, at least once, with no gaps: missed ones are
        replayed. ``since`` replays from that seq first; ``timeout`` ends the iteration
        after that many seconds without an event. Through a broker outage the stream waits
        and resumes where it stopped (``reconnect=False``: raise Unreachable instead);
        ``on_connection(False)`` is called when such an outage starts, ``(True)`` when it ends."""
        return self._stream(event_stream(self, topics, since, timeout, idle_check, reconnect,
                                         on_connection))

    @background
    def subscribe(self, callback: Callable[[Event], Any], topics: Iterable[str] = (), *,
                  since: int | None = None) -> object:
        """Call ``callback(event)`` for each event until the client closes, from a
        background thread (Client) or task (AsyncClient; the callback may be async). The
        subscription outlives broker restarts: it resumes after the last delivered seq."""
        check_callback(callback)
        check_flow_args(topics, since, None, 1.0)  # raise bad arguments here, not in the thread
        return self._background(subscription(self, callback, topics, since), "zmesh-events")

    @background
    def subscribe_task_updates(self, callback: Callable[[TaskUpdate], Any], task: str | None = None, *,
                               since: int | None = None) -> object:
        """Call ``callback({task_id, old_status, new_status, claimed_by, timestamp})`` for
        every task change (of ``task`` only, when given), at least once, in order: the
        changes after event ``since`` (a seq from ``hello()`` or a snapshot), else those after
        the background subscription starts, which may be a moment after this call."""
        if not callable(callback):
            raise InvalidArgument("callback must be callable", {"field": "callback"})
        if task is not None:
            task = protocol.check_value(protocol.OPS["task_get"].by_name["task"], task)

        def on_event(event: Event) -> Any:
            body = event.body
            if task is not None and body.get("task_id") != task:
                return None
            return callback({"task_id": body.get("task_id"), "old_status": body.get("old_status"),
                             "new_status": body.get("new_status"), "claimed_by": body.get("claimed_by"),
                             "timestamp": body.get("ts"), "topic": event.topic, "seq": event.seq})
        return self.subscribe(on_event, topics=["task."], since=since)

    # ------------------------------------------------------------ coordinator
    @stream
    def watch(self, *, timeout: float | None = None, idle_check: float = 1.0,
              on_connection: Callable[[bool], None] | None = None,
              initial: bool = False) -> Iterator[tuple[Roster, Event | None]]:
        """A coordinator's view: a :class:`Roster` from one snapshot, then ``(roster, event)``
        for every event after it, the roster already updated: state changes arrive as they
        are published, with no polling. Through a broker restart the stream resumes after
        the last seq; if the broker's log no longer holds what was missed, a new snapshot is
        taken. ``timeout`` ends it after that many quiet seconds; ``on_connection`` hears
        when the broker goes away (False) and comes back (True). With ``initial`` it also
        yields ``(roster, None)`` after each snapshot (a dashboard draws it at once)."""
        return self._stream(watch_flow(self, timeout, idle_check, on_connection, initial))

    @background
    def follow(self, callback: Callable[[Roster, Event], Any]) -> object:
        """Call ``callback(roster, event)`` for every event after a snapshot (see watch)
        until the client closes, from a background thread (Client) or task (AsyncClient);
        it recovers by itself from broker restarts."""
        check_callback(callback)
        return self._background(following(self, callback), "zmesh-watch")

    # ------------------------------------------------------------ messages pushed to this agent
    @op
    def on_message(self, callback: Callable[[Message], Any], filter: Any = None) -> Receiver:
        """Call ``callback(message)`` for every message pushed to this agent that matches
        ``filter`` (a dict of field -> value(s), or a callable); several receivers each get
        their copy. Callbacks run one at a time on the client's callback thread (Client) or
        task (AsyncClient)."""
        return self._flow(receiver_flow(self, callback, filter, False, "on_message"))

    @op
    def on_task(self, callback: Callable[[Message], Any], filter: Any = None) -> Receiver:
        """Call ``callback(message)`` for every task assigned to this agent (``assign``):
        ``message.claim`` is the claim the broker took on this agent's lease."""
        return self._flow(receiver_flow(self, callback, filter, True, "on_task"))

    @op
    def receive(self, timeout: float | None = None) -> Message | None:
        """The next pushed message no receiver took, waiting up to ``timeout`` seconds
        (None: until one comes); None when none came."""
        return self._flow(receive_flow(self, timeout))

    @op
    def request(self, agent: str, subject: str, body: Any = None, *, timeout: float = 5.0,
                **options: Any) -> Message:
        """Send a ``request`` to ``agent`` and wait for its ``reply`` (the message carrying
        this request's correlation id). No reply within ``timeout``: NoReply; a reply that
        comes later is not lost (it goes to the receivers, or receive())."""
        return self._flow(request_flow(self, agent, subject, body, timeout, options))

    @op
    def watch_task(self, task: str, callback: Callable[[Message], Any]) -> Receiver:
        """Receive the notifications streamed for ``task`` (notify_task) in ``callback``."""
        return self._flow(watch_task_flow(self, task, callback))

    # ------------------------------------------------------------ the lease
    @op
    def keepalive(self) -> None:
        """Renew this client's own lease now, as the heartbeat does: for a client made
        with ``heartbeat=False`` whose owner renews it (the HTTP gateway renews an agent's
        lease on each of its requests). A lapsed lease is registered again and
        ``on_lease_lost`` is told; its claims are gone. Raises what the broker answered."""
        return self._flow(self._lease.keepalive_flow(self.connected, self.connect, self._on_lease_lost))
