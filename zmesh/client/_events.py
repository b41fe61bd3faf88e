"""Event delivery with no I/O: at-least-once, in order, gap-free, and through outages; the
event stream, the coordinator's watch and the background subscriptions built on it.

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
* A stream starts where ``hello`` says "now" is, on the PUB endpoint hello names; when its
  client follows a moved broker, the stream asks the new broker hello and subscribes there
  (:class:`Subscribe`). Closing the client ends a stream at its next step, quietly.
* ``watch`` starts from one snapshot (retried with backoff while the broker is away, telling
  ``on_connection``) and takes a new one when the log no longer holds what it missed; a
  subscription (``subscribe``, ``follow``) opens its stream again after an outage, and a
  callback's exception is logged and never ends it.

The drivers (``Client._stream``, ``AsyncClient._stream``) answer the actions: Poll with the
frames the SUB socket got within its timeout or None; Subscribe by closing the SUB socket and
opening one on the endpoint (None: none); Deliver by handing ``event`` to the application;
the rest as in _flows.py (Call, Sleep, Invoke).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import protocol
from ..errors import BadRequest, SnapshotRequired, Unreachable, ZmeshError
from ..protocol import Event
from ._checks import check_bool, check_callback, check_field, check_timeout, names
from ._flows import Invoke, Sleep
from ._protocol import Call, _identity, resolve_pub
from ._roster import Roster

if TYPE_CHECKING:
    from ..protocol.records import Replay, Snapshot
    from ._flows import Link

__all__ = ["Deliver", "EventTracker", "Poll", "Sleep", "Subscribe", "check_callback", "event_flow",
           "event_stream", "following", "resuming", "subscription", "watch_flow"]

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

    def replay_call(self) -> Call[Replay]:
        return Call("replay", {"since": self.last or 0, "limit": protocol.MAX_REPLAY_LIMIT}, _identity)

    def replayed(self, body: Replay) -> list[Event]:
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
    """Hand this to the application: an Event (``watch``: the ``(roster, event)`` pair)."""

    event: Any


@dataclass(slots=True)
class Subscribe:
    """Close the stream's SUB socket and open one on ``endpoint`` (None: none)."""

    endpoint: str | None


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


Action = Poll | Call[Any] | Deliver | Sleep | Subscribe | Invoke
#: a stream: yields actions, returns nothing
Stream = Generator[Action, Any, None]


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
    if on_connection is not None:
        check_callback(on_connection, "on_connection")
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


# ---------------------------------------------------------------------------- streams
def event_stream(link: Link, topics: Iterable[str] = (), since: int | None = None, timeout: float | None = None,
                 idle_check: float = 1.0, reconnect: bool = True,
                 on_connection: Callable[[bool], None] | None = None) -> Stream:
    """``events()``: hello (where "now" is, and the PUB endpoint), a SUB socket there, then
    the event flow, its SUB socket following the client when the client follows its
    broker. Ends when the client closes (quietly) or after ``timeout`` quiet seconds."""
    check_flow_args(topics, since, timeout, idle_check, reconnect, on_connection)
    link.info = info = yield Invoke(link.hello)  # the method: a subclass or a test may wrap it
    flow = new_flow(topics, since, timeout, idle_check, reconnect, info["seq"], on_connection)
    dialled = link.endpoint
    yield Subscribe(resolve_pub(dialled, info["pub"]))
    answer: Any = None
    error: ZmeshError | None = None
    try:
        while not link._is_closing():
            try:
                action = flow.throw(error) if error is not None else flow.send(answer)
            except StopIteration:
                return
            answer, error = None, None
            if isinstance(action, Call):
                try:
                    answer = yield action
                except ZmeshError as exc:
                    error = exc
                if link.endpoint != dialled:  # the client followed its broker: so does the SUB
                    dialled = yield from _resubscribe(link, dialled)
            elif isinstance(action, Sleep):
                if (yield action):
                    return
            else:
                answer = yield action
    finally:
        flow.close()


def _resubscribe(link: Link, dialled: str) -> Generator[Action, Any, str]:
    """Subscribe on the PUB endpoint of the broker the client moved to (asked with hello);
    returns the endpoint the stream now follows (``dialled`` still, when that broker did not
    answer yet: the stream tries again after its next call)."""
    try:
        link.info = yield Invoke(link.hello)
    except ZmeshError as exc:
        log.info("event stream: the broker at %s did not answer hello yet (%s)", link.endpoint, exc.message)
        return dialled
    dialled = link.endpoint  # where the hello was answered
    pub = resolve_pub(dialled, link.info["pub"])
    log.info("event stream follows the broker to %s", pub)
    yield Subscribe(pub)
    return dialled


def _relay(flow: Stream, on_deliver: Callable[[Any], Generator[Action, Any, None]]) -> Stream:
    """Run ``flow`` inside this one: its actions go out, their answers (or errors) back in;
    what it delivers is handed to ``on_deliver``, a flow of its own."""
    answer: Any = None
    error: Exception | None = None
    try:
        while True:
            try:
                action = flow.throw(error) if error is not None else flow.send(answer)
            except StopIteration:
                return
            answer, error = None, None
            if isinstance(action, Deliver):
                yield from on_deliver(action.event)
                continue
            try:
                answer = yield action
            except Exception as exc:  # noqa: BLE001 - what the driver threw in is the inner flow's
                error = exc
    finally:
        flow.close()


def _snapshot(link: Link, on_connection: Callable[[bool], None] | None) -> Generator[Action, Any, Snapshot]:
    """One snapshot, retried with backoff while the broker is unreachable (telling
    ``on_connection`` when that starts and ends); a close meanwhile raises the Unreachable."""
    wait, down = BACKOFF_FIRST_S, False
    while True:
        try:
            snap = yield Invoke(link.snapshot)
        except Unreachable as exc:
            if not down and on_connection is not None:
                on_connection(False)
            down = True
            log.warning("watch: broker unreachable (%s); retrying in %g s", exc.message, wait)
            if (yield Sleep(wait)):
                raise
            wait = min(BACKOFF_MAX_S, wait * 2)
            continue
        if down and on_connection is not None:
            on_connection(True)
        return snap


def watch_flow(link: Link, timeout: float | None = None, idle_check: float = 1.0,
               on_connection: Callable[[bool], None] | None = None, initial: bool = False) -> Stream:
    """``watch()``: a Roster from one snapshot, then ``(roster, event)`` for every event
    after it that changed the roster; a new snapshot when the broker's log was trimmed past
    what the stream missed. With ``initial``, ``(roster, None)`` after each snapshot."""
    check_flow_args((), None, timeout, idle_check, True, on_connection)
    check_bool("initial", initial)
    while not link._is_closing():
        roster = Roster((yield from _snapshot(link, on_connection)))
        if initial:
            yield Deliver((roster, None))

        def changed(event: Event, roster: Roster = roster) -> Generator[Action, Any, None]:
            if roster.apply(event):
                yield Deliver((roster, event))
        try:
            yield from _relay(event_stream(link, since=roster.seq, timeout=timeout, idle_check=idle_check,
                                           on_connection=on_connection), changed)
            return
        except SnapshotRequired:
            log.warning("watch: events after seq %s were trimmed from the broker's log; "
                        "taking a new snapshot", roster.seq)


def resuming(link: Link, stream: Callable[[], Stream], deliver: Callable[[Any], Any], item: str,
             what: str) -> Stream:
    """A subscription: what ``stream()`` delivers goes to ``deliver`` (Invoke: awaited when
    it is a coroutine) until the client closes; after an outage the stream is opened again
    a second later. A callback's exception is logged and does not end it."""
    def call_back(got: Any) -> Generator[Action, Any, None]:
        try:
            yield Invoke(deliver, (got,))
        except Exception:
            log.exception("%s callback failed", item)

    while not link._is_closing():
        try:
            yield from _relay(stream(), call_back)
        except Unreachable as exc:
            log.warning("%s interrupted (%s); resuming", what, exc)
            yield Subscribe(None)
            if (yield Sleep(1.0)):
                return


def subscription(link: Link, callback: Callable[[Event], Any], topics: Iterable[str],
                 since: int | None) -> Stream:
    """``subscribe()``: events to ``callback``, resumed after the last one delivered."""
    last = since

    def deliver(event: Event) -> Any:
        nonlocal last
        last = event.seq  # resume after it even if the callback fails
        return callback(event)
    return resuming(link, lambda: event_stream(link, topics, since=last), deliver, "event", "event subscription")


def following(link: Link, callback: Callable[[Roster, Event], Any]) -> Stream:
    """``follow()``: ``callback(roster, event)`` for every event after a snapshot."""
    return resuming(link, lambda: watch_flow(link), lambda pair: callback(*pair), "watch", "watch")
