"""Event delivery with no I/O: at-least-once, in order, gap-free, and through outages.

Rules this module keeps (the zguide's Clone pattern):

* The SUB socket subscribes to every topic, so every sequence number is seen and a gap is
  noticed; topic filtering happens here (:class:`EventTracker`).
* A gap, a PUB heartbeat ahead of what was delivered, or three silent heartbeat periods
  make the flow ``replay`` what it missed; one transaction's events arrive together.
* A broker outage does not end the stream (unless ``reconnect`` is off): a replay that finds
  no broker waits with backoff (:class:`Sleep`) and tries again, logging one notice when the
  outage starts and one when it ends. The SUB socket reconnects by itself meanwhile.
* A broker whose log is *behind* what was delivered (a different or restored broker) is
  said in the log and followed from its latest sequence; a ``since`` ahead of the broker at
  the start is the caller's mistake and is raised (``bad_request`` naming ``since``).

The drivers (Client.events, AsyncClient.events) answer the actions: Poll with frames or
None, Call with the reply body (or by throwing the ZmeshError into the flow), Sleep by
sleeping, Deliver by handing the event to the application.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterable

from .. import protocol
from ..errors import BadRequest, InvalidArgument, Unreachable
from ..protocol import Event
from ._api import check_bool, check_field, check_timeout, names
from ._protocol import Call, _identity

log = logging.getLogger("zmesh.client")

#: backoff between replay attempts while the broker is unreachable (seconds)
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 5.0


class EventTracker:
    """What has been delivered. ``last`` is the highest seq delivered (None: not yet known)."""

    def __init__(self, topics: Iterable[str] = (), since: int | None = None) -> None:
        self.topics = tuple(t for t in topics if t)
        self.last = since

    def wants(self, topic: str) -> bool:
        return not self.topics or topic.startswith(self.topics)

    def classify(self, event: Event) -> str:
        """'dup' (already delivered), 'next' (deliver), or 'gap' (replay first)."""
        if self.last is None:
            return "next"
        if event.seq <= self.last:
            return "dup"
        return "next" if event.seq == self.last + 1 else "gap"

    def delivered(self, seq: int) -> None:
        if self.last is None or seq > self.last:
            self.last = seq

    def replay_call(self) -> Call[dict[str, Any]]:
        return Call("replay", {"since": self.last or 0, "limit": protocol.MAX_REPLAY_LIMIT}, _identity)

    def replayed(self, body: dict[str, Any]) -> list[Event]:
        """Events from a replay reply to deliver (advances ``last``)."""
        out = []
        for raw in body["events"]:
            ev = Event(raw["topic"], raw["seq"], raw["body"])
            if self.last is not None and ev.seq <= self.last:
                continue
            self.delivered(ev.seq)
            if self.wants(ev.topic):
                out.append(ev)
        return out


@dataclass(slots=True)  # one per request: a frozen one costs a setattr call per field
class Poll:
    """Wait up to ``timeout`` seconds for a message on the SUB socket (answer: frames or None)."""

    timeout: float


@dataclass(slots=True)  # one per request: a frozen one costs a setattr call per field
class Deliver:
    """Hand this event to the application."""

    event: Event


@dataclass(slots=True)  # one per request: a frozen one costs a setattr call per field
class Sleep:
    """Wait this many seconds before trying the broker again (answer: None)."""

    seconds: float


class Outage:
    """Backoff and the two log lines of one broker outage; ``notify(False)`` when it starts
    and ``notify(True)`` when it ends (a dashboard shows it)."""

    def __init__(self, clock: Callable[[], float], notify: Callable[[bool], None] | None = None) -> None:
        self._clock = clock
        self._notify = notify
        self.since: float | None = None
        self.backoff = BACKOFF_FIRST_S

    def failed(self, exc: Unreachable) -> float:
        if self.since is None:
            self.since = self._clock()
            if self._notify is not None:
                self._notify(False)
            log.warning("event stream: broker unreachable (%s); reconnecting with backoff up to %g s",
                        exc.message, BACKOFF_MAX_S)
        wait, self.backoff = self.backoff, min(BACKOFF_MAX_S, self.backoff * 2)
        return wait

    def recovered(self, last: int | None) -> None:
        if self.since is not None:
            log.warning("event stream: broker back after %.1f s; resuming after seq %s",
                        self._clock() - self.since, last)
            if self._notify is not None:
                self._notify(True)
        self.since, self.backoff = None, BACKOFF_FIRST_S


Action = Poll | Call[Any] | Deliver | Sleep


def event_flow(tracker: EventTracker, *, replay_first: bool, timeout: float | None,
               idle_check: float, reconnect: bool = True,
               clock: Callable[[], float] = time.monotonic,
               on_connection: Callable[[bool], None] | None = None) -> Generator[Action, Any, None]:
    """Events in sequence order, at least once: the PUB stream, with gaps filled by replay.

    The broker's PUB heartbeat carries its latest seq, so a lost *last* event is noticed
    too; if the SUB socket hears nothing at all for 3 heartbeats (a broker restart in
    progress) the flow replays anyway. Returns after ``timeout`` seconds with no event
    delivered (None: never)."""
    outage = Outage(clock, on_connection)
    if replay_first:
        yield from _replay_flow(tracker, outage, reconnect, first=True)
    delivered_at = heard_at = clock()
    while True:
        now = clock()
        if timeout is not None and now - delivered_at >= timeout:
            return
        wait = idle_check if timeout is None else min(idle_check, delivered_at + timeout - now)
        frames = yield Poll(max(0.0, wait))
        if frames is None:
            if clock() - heard_at >= 3 * protocol.PUB_HEARTBEAT_S and tracker.last is not None:
                heard_at = clock()
                if (yield from _replay_flow(tracker, outage, reconnect)):
                    delivered_at = clock()
            continue
        heard_at = clock()
        event = protocol.decode_event(frames)
        if event.topic == protocol.HEARTBEAT_TOPIC:
            if tracker.last is None:
                tracker.delivered(event.seq)  # following from now: this is where now is
            elif event.seq != tracker.last and (yield from _replay_flow(tracker, outage, reconnect)):
                delivered_at = clock()
            continue
        kind = tracker.classify(event)
        if kind == "gap":
            if (yield from _replay_flow(tracker, outage, reconnect)):
                delivered_at = clock()
            kind = tracker.classify(event)
        if kind == "next":
            tracker.delivered(event.seq)
            if tracker.wants(event.topic):
                delivered_at = clock()
                yield Deliver(event)


def _replay_flow(tracker: EventTracker, outage: Outage, reconnect: bool, first: bool = False
                 ) -> Generator[Action, Any, int]:
    """Replay everything after tracker.last; returns how many events it delivered."""
    count = 0
    while True:
        try:
            body = yield tracker.replay_call()
        except Unreachable as exc:
            if not reconnect:
                raise
            yield Sleep(outage.failed(exc))
            continue
        except BadRequest as exc:
            behind = exc.details.get("last_seq")
            if first or behind is None or exc.details.get("field") != "since":
                raise
            log.warning("event stream: the broker's log ends at seq %s, behind seq %s delivered here "
                        "(a different or restored broker); following it from %s", behind, tracker.last, behind)
            tracker.last = behind
            continue
        outage.recovered(tracker.last)
        first = False
        for event in tracker.replayed(body):
            count += 1
            yield Deliver(event)
        if not body["more"]:
            return count


def check_flow_args(topics: Iterable[str], since: int | None, timeout: float | None,
                    idle_check: float, reconnect: bool = True,
                    on_connection: Callable[[bool], None] | None = None) -> None:
    """Raise a ZmeshError naming the bad argument (before any I/O)."""
    check_bool("reconnect", reconnect)
    if on_connection is not None and not callable(on_connection):
        raise InvalidArgument(f"on_connection must be callable, not {type(on_connection).__name__}",
                              {"field": "on_connection"})
    check_field("replay", "topics", names("topics", topics) or [])
    if since is not None:
        check_field("replay", "since", since)
    check_timeout("timeout", timeout, allow_none=True)
    check_timeout("idle_check", idle_check)


def new_flow(topics: Iterable[str], since: int | None, timeout: float | None,
             idle_check: float, reconnect: bool, now_seq: int,
             on_connection: Callable[[bool], None] | None = None) -> Generator[Action, Any, None]:
    """An event_flow from a driver's arguments, already checked with check_flow_args (both
    drivers call this). Without ``since`` the stream follows from ``now_seq`` (the broker's
    seq when the stream started, from hello): what is published after it is delivered even
    if the SUB socket connects late or the broker goes away before the first heartbeat."""
    topic_list = names("topics", topics) or []
    return event_flow(EventTracker(topic_list, now_seq if since is None else since),
                      replay_first=since is not None,
                      timeout=check_timeout("timeout", timeout, allow_none=True),
                      idle_check=check_timeout("idle_check", idle_check),  # type: ignore[arg-type]
                      reconnect=reconnect, on_connection=on_connection)


def check_callback(callback: Any) -> None:
    if not callable(callback):
        raise InvalidArgument(f"callback must be callable, not {type(callback).__name__}",
                              {"field": "callback"})
