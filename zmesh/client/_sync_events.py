"""The event side of the blocking ``Client``: event streams (``events``, ``subscribe``) and
the coordinator's view (``watch``, ``follow``), a mixin of Client.

Rules: a stream delivers in sequence order, at least once, with no gaps, through broker
outages (the flow in _events.py); its SUB socket follows the client when the client follows
its broker to a new endpoint (asking the new broker for its PUB endpoint with hello); a
callback's exception is logged and never ends a subscription; ``zmq.ZMQError`` never
leaves this module (a socket failure is ``Unreachable``).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import zmq

from ..errors import SnapshotRequired, Unreachable, ZmeshError
from ..protocol import Event
from ..transport.sockets import recv_frames
from ._api import check_bool
from ._events import Deliver, Poll, Sleep, check_callback, check_flow_args, new_flow
from ._protocol import SUB_OPTIONS, connect_socket, resolve_pub
from ._roster import Roster

log = logging.getLogger("zmesh.client")


class EventStreams:
    """Client's event streams (needs the driver's ``_call``, ``hello`` and sockets)."""

    if TYPE_CHECKING:
        endpoint: str
        info: dict[str, Any]
        _ctx: zmq.Context
        _curve: tuple[tuple[int, Any], ...]
        _stop: threading.Event
        _subs: list[threading.Thread]

        def _call(self, call: Any) -> Any: ...
        def hello(self) -> dict[str, Any]: ...
        def snapshot(self) -> dict[str, Any]: ...

    # ------------------------------------------------------------ events
    def events(self, topics: Iterable[str] = (), *, since: int | None = None,
               timeout: float | None = None, idle_check: float = 1.0,
               reconnect: bool = True, on_connection: Callable[[bool], None] | None = None
               ) -> Iterator[Event]:
        """Yield events in sequence order, at least once, with no gaps: missed ones are
        replayed. ``since`` replays from that seq first; ``timeout`` ends the iteration
        after that many seconds without an event. Through a broker outage the stream waits
        and resumes where it stopped (``reconnect=False``: raise Unreachable instead);
        ``on_connection(False)`` is called when such an outage starts, ``(True)`` when it ends."""
        check_flow_args(topics, since, timeout, idle_check, reconnect, on_connection)
        self.info = self.hello()  # where "now" is, and the PUB endpoint
        flow = new_flow(topics, since, timeout, idle_check, reconnect, self.info["seq"], on_connection)
        dialled = self.endpoint
        sub = connect_socket(self._ctx, zmq.SUB, SUB_OPTIONS + self._curve, resolve_pub(dialled, self.info["pub"]))
        poller = zmq.Poller()  # kept: Socket.poll would build one per event
        poller.register(sub, zmq.POLLIN)
        try:
            answer: Any = None
            error: ZmeshError | None = None
            while not self._stop.is_set():
                try:
                    action = flow.throw(error) if error is not None else flow.send(answer)
                except StopIteration:
                    return
                answer, error = None, None
                if isinstance(action, Poll):
                    answer = recv_frames(sub) if poller.poll(action.timeout * 1000) else None  # type: ignore[arg-type]  # ms, a float
                elif isinstance(action, Deliver):
                    yield action.event
                elif isinstance(action, Sleep):
                    if self._stop.wait(action.seconds):
                        return
                else:
                    try:
                        answer = self._call(action)
                    except ZmeshError as exc:
                        error = exc
                    if self.endpoint != dialled:  # the client followed its broker: so does the SUB
                        moved = self._resubscribe()
                        if moved is not None:
                            sub.close(linger=0)
                            sub, dialled = moved
                            poller = zmq.Poller()
                            poller.register(sub, zmq.POLLIN)
        except zmq.ZMQError as exc:
            raise Unreachable(f"event socket error: {exc}", {"endpoint": self.endpoint}) from None
        finally:
            sub.close(linger=0)

    def _resubscribe(self) -> tuple[zmq.Socket, str] | None:
        """A SUB socket on the PUB endpoint of the broker the client moved to (asked with
        hello), and the endpoint it belongs to; None if that broker did not answer (the
        stream tries again after its next call)."""
        try:
            self.info = self.hello()
        except ZmeshError as exc:
            log.info("event stream: the broker at %s did not answer hello yet (%s)", self.endpoint, exc.message)
            return None
        dialled = self.endpoint  # where the hello was answered
        pub = resolve_pub(dialled, self.info["pub"])
        log.info("event stream follows the broker to %s", pub)
        return connect_socket(self._ctx, zmq.SUB, SUB_OPTIONS + self._curve, pub), dialled

    def subscribe(self, callback: Callable[[Event], None], topics: Iterable[str] = (), *,
                  since: int | None = None) -> threading.Thread:
        """Call ``callback(event)`` from a background thread for each event until close().
        The subscription outlives broker restarts: it resumes after the last delivered seq."""
        check_callback(callback)
        check_flow_args(topics, since, None, 1.0)  # raise bad arguments here, not in the thread

        last = [since]

        def deliver(event: Event) -> None:
            last[0] = event.seq  # resume after it even if the callback fails
            callback(event)
        return self._resuming(lambda: self.events(topics, since=last[0]), deliver, "event", "event subscription",
                              "zmesh-events")

    def _resuming(self, stream: Callable[[], Iterable[Any]], deliver: Callable[[Any], None], item: str,
                  what: str, name: str) -> threading.Thread:
        """A thread feeding ``deliver`` from ``stream()`` until close(), opening the stream
        again after an outage; a callback bug is logged and does not end it."""
        def run() -> None:
            while not self._stop.is_set():
                try:
                    for got in stream():
                        try:
                            deliver(got)
                        except Exception:
                            log.exception("%s callback failed", item)
                except Unreachable as exc:
                    log.warning("%s interrupted (%s); resuming", what, exc)
                    self._stop.wait(1.0)

        thread = threading.Thread(target=run, daemon=True, name=name)
        thread.start()
        self._subs.append(thread)
        return thread

    # ------------------------------------------------------------ coordinator
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
        check_flow_args((), None, timeout, idle_check, True, on_connection)
        check_bool("initial", initial)
        while not self._stop.is_set():
            roster = Roster(self._snapshot_retrying(on_connection))
            if initial:
                yield roster, None
            try:
                for event in self.events(since=roster.seq, timeout=timeout, idle_check=idle_check,
                                         on_connection=on_connection):
                    if roster.apply(event):
                        yield roster, event
                return
            except SnapshotRequired:
                log.warning("watch: events after seq %s were trimmed from the broker's log; "
                            "taking a new snapshot", roster.seq)

    def _snapshot_retrying(self, on_connection: Callable[[bool], None] | None = None) -> dict[str, Any]:
        wait, down = 0.5, False
        while True:
            try:
                snap = self.snapshot()
                if down and on_connection is not None:
                    on_connection(True)
                return snap
            except Unreachable as exc:
                if not down and on_connection is not None:
                    on_connection(False)
                down = True
                log.warning("watch: broker unreachable (%s); retrying in %g s", exc.message, wait)
                if self._stop.wait(wait):
                    raise
                wait = min(5.0, wait * 2)

    def follow(self, callback: Callable[[Roster, Event], None]) -> threading.Thread:
        """Call ``callback(roster, event)`` from a background thread for every event after a
        snapshot (see watch) until close(); it recovers by itself from broker restarts."""
        check_callback(callback)

        return self._resuming(self.watch, lambda pair: callback(*pair), "watch", "watch", "zmesh-watch")

