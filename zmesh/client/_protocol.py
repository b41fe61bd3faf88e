"""The client's logic with no I/O: request ids, retries, reply matching, the op calls,
endpoint resolution and event gap tracking. ``Client`` and ``AsyncClient`` only drive it.

A request is a generator (:meth:`ClientCore.exchange`) that yields :class:`Send` and
:class:`Recv` actions and returns the reply; the sync driver runs it with blocking
``poll``, the async driver with ``await``. So retry and matching rules exist once.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Generator, Generic, Iterable, TypeVar
from urllib.parse import urlsplit

import zmq

from .. import protocol
from ..errors import Conflict, ProtocolError, RemoteError, Unreachable, from_wire
from ..protocol import Event, Reply

T = TypeVar("T")


@dataclass(frozen=True)
class Claim:
    """A claim the broker granted. ``token`` is the fencing token to pass to complete/fail."""

    task_id: str
    token: int
    expires_at: float | None
    agent: str = ""
    lease: int = 0
    task: dict[str, Any] | None = None


@dataclass(frozen=True)
class Send:
    frames: list[bytes]


@dataclass(frozen=True)
class Recv:
    timeout: float  # seconds


@dataclass(frozen=True)
class Call(Generic[T]):
    """One op: what to send and how to turn the reply body into the result."""

    op: str
    body: dict[str, Any]
    convert: Callable[[Any], T]
    #: turns some refusals into a result (claim: lost race -> None); re-raises the rest
    on_error: Callable[[RemoteError], T] | None = None


def _identity(body: Any) -> Any:
    return body


def _to_claim(body: Any) -> Claim | None:
    if body is None:
        return None
    expires = body.get("expires_in")
    return Claim(body["task"], body["token"], None if expires is None else time.time() + expires,
                 body.get("agent", ""), body.get("lease", 0), body.get("task_record"))


def resolve_pub(dialled: str, pubs: Iterable[str]) -> str:
    """Pick the PUB endpoint on the transport we dialled; replace a wildcard host with
    the host we dialled (the broker bound tcp://*:PORT and cannot know our route)."""
    pubs = list(pubs)
    scheme = dialled.split("://", 1)[0]
    for pub in pubs:
        if pub.split("://", 1)[0] != scheme:
            continue
        if scheme != "tcp":
            return pub
        host = urlsplit(pub).hostname or ""
        if host in ("*", "0.0.0.0", "::", ""):
            dhost = dialled.split("://", 1)[1].rsplit(":", 1)[0]
            return f"tcp://{dhost}:{pub.rsplit(':', 1)[1]}"
        return pub
    if not pubs:
        raise ProtocolError("the broker named no PUB endpoint")
    raise ProtocolError(f"the broker has no PUB endpoint on {scheme}:// (it has {', '.join(pubs)})")


class ClientCore:
    """Per-client protocol state. Not thread-safe by itself; drivers serialise access."""

    def __init__(self, *, timeout: float, retry_interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        # resend the same request (same req_id: the broker answers a retry with the original
        # reply) when this long passes without an answer
        self.retry_interval = retry_interval or max(0.25, timeout / 4)
        self._prefix = uuid.uuid4().bytes
        self._counter = itertools.count(1)
        self._clock = clock

    def new_req_id(self) -> bytes:
        return self._prefix + next(self._counter).to_bytes(8, "big")

    def exchange(self, op: str, body: dict[str, Any], endpoint: str
                 ) -> Generator[Send | Recv, list[bytes] | None, Reply]:
        req_id = self.new_req_id()
        frames = protocol.encode_request(req_id, op, body)
        start = self._clock()
        yield Send(frames)
        next_send = start + self.retry_interval
        while True:
            now = self._clock()
            if now - start >= self.timeout:
                raise Unreachable(
                    f"no reply from the broker at {endpoint} within {self.timeout:g} s (op {op})",
                    {"endpoint": endpoint, "op": op})
            if now >= next_send:
                yield Send(frames)
                next_send = now + self.retry_interval
                continue
            got = yield Recv(min(next_send, start + self.timeout) - now)
            if got is None:
                continue
            reply = protocol.decode_reply(got)
            if reply.req_id == req_id:
                return reply
            # a late reply to an earlier request that timed out: not ours, drop it

    @staticmethod
    def result(call: Call[T], reply: Reply) -> T:
        if not reply.ok:
            err = from_wire(reply.body)
            if call.on_error is not None:
                return call.on_error(err)
            raise err
        return call.convert(reply.body)


class EventTracker:
    """At-least-once, in-order event delivery over PUB/SUB + replay (the Clone pattern).

    The SUB socket subscribes to every topic so each sequence number is seen and a gap is
    noticed; topic filtering happens here. ``last`` is the highest seq delivered."""

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


@dataclass(frozen=True)
class Poll:
    """Wait up to ``timeout`` seconds for a message on the SUB socket (answer: frames or None)."""

    timeout: float


@dataclass(frozen=True)
class Deliver:
    """Hand this event to the application."""

    event: Event


def event_flow(tracker: EventTracker, *, replay_first: bool, timeout: float | None,
               idle_check: float, clock: Callable[[], float] = time.monotonic
               ) -> Generator[Poll | Call[Any] | Deliver, Any, None]:
    """Events in sequence order, at least once: the PUB stream, with gaps filled by replay.

    The broker's PUB heartbeat carries its latest seq, so a lost *last* event is noticed
    too; if the SUB socket hears nothing at all for 3 heartbeats (a broker restart in
    progress) the flow replays anyway. Yields Poll (answer: frames or None), Call (answer:
    the reply body) and Deliver; returns after ``timeout`` seconds with no event delivered."""
    if replay_first:
        yield from _replay_flow(tracker)
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
                if (yield from _replay_flow(tracker)):
                    delivered_at = clock()
            continue
        heard_at = clock()
        event = protocol.decode_event(frames)
        if event.topic == protocol.HEARTBEAT_TOPIC:
            if tracker.last is None:
                tracker.delivered(event.seq)  # following from now: this is where now is
            elif event.seq > tracker.last and (yield from _replay_flow(tracker)):
                delivered_at = clock()
            continue
        kind = tracker.classify(event)
        if kind == "gap":
            if (yield from _replay_flow(tracker)):
                delivered_at = clock()
            kind = tracker.classify(event)
        if kind == "next":
            tracker.delivered(event.seq)
            if tracker.wants(event.topic):
                delivered_at = clock()
                yield Deliver(event)


def _replay_flow(tracker: EventTracker) -> Generator[Call[Any] | Deliver, Any, int]:
    """Replay everything after tracker.last; returns how many events it delivered."""
    count = 0
    while True:
        body = yield tracker.replay_call()
        for event in tracker.replayed(body):
            count += 1
            yield Deliver(event)
        if not body["more"]:
            return count


#: socket options both drivers set: bounded queues, fast reconnect, ZMTP heartbeats to
#: notice a dead TCP peer
DEALER_OPTIONS = ((zmq.LINGER, 0), (zmq.SNDHWM, 10_000), (zmq.RECONNECT_IVL, 100),
                  (zmq.RECONNECT_IVL_MAX, 1000), (zmq.HEARTBEAT_IVL, 5_000),
                  (zmq.HEARTBEAT_TIMEOUT, 15_000))
#: a SUB sees every topic (gap detection needs every seq); topics are filtered in EventTracker
SUB_OPTIONS = ((zmq.LINGER, 0), (zmq.RCVHWM, 100_000), (zmq.SUBSCRIBE, b""))


def configure(sock: Any, options: Iterable[tuple[int, Any]]) -> Any:
    for opt, value in options:
        sock.setsockopt(opt, value)
    return sock


class Api:
    """Every op, defined once. ``_call`` is the driver's: it returns the result (Client)
    or an awaitable of it (AsyncClient)."""

    agent: str | None

    def _call(self, call: Call[Any]) -> Any:  # pragma: no cover - drivers override
        raise NotImplementedError

    def _agent(self, agent: str | None) -> str:
        name = agent or self.agent
        if not name:
            raise ValueError("this call needs an agent: pass agent=... here or to the client")
        return name

    def hello(self) -> Any:
        return self._call(Call("hello", {}, _identity))

    def register(self, agent: str | None = None, *, capabilities: Iterable[str] = (),
                 metadata: dict[str, Any] | None = None, ttl: float | None = None) -> Any:
        return self._call(Call("register", {"agent": self._agent(agent), "capabilities": list(capabilities),
                                            "metadata": metadata or {}, "ttl": ttl}, _identity))

    def heartbeat(self, agent: str | None = None, *, lease: int | None = None) -> Any:
        return self._call(Call("heartbeat", {"agent": self._agent(agent), "lease": lease}, _identity))

    def unregister(self, agent: str | None = None) -> Any:
        return self._call(Call("unregister", {"agent": self._agent(agent)}, _identity))

    def create_task(self, task_id: str, *, type: str = "task", data: Any = None, priority: int = 0,
                    requires: Iterable[str] = (), max_attempts: int = 3,
                    depends_on: Iterable[str] = ()) -> Any:
        """Create a task; returns its record. Raises Conflict if the id exists."""
        return self._call(Call("task_create", {
            "id": task_id, "type": type, "data": data, "priority": priority,
            "requires": list(requires), "max_attempts": max_attempts,
            "depends_on": list(depends_on)}, _identity))

    def claim(self, task_id: str, *, agent: str | None = None, ttl: float | None = None) -> Any:
        """Claim -> Claim, or None when another agent holds the task (lost the race).
        Raises NotFound for an unknown task and Conflict when it is not claimable."""
        return self._call(Call("claim", {"task": task_id, "agent": self._agent(agent), "ttl": ttl},
                               _to_claim, _none_if_lost))

    def try_claim(self, task_id: str, *, agent: str | None = None, ttl: float | None = None) -> Any:
        """Like claim, but a lost race raises Conflict (with the holder) instead of None."""
        return self._call(Call("claim", {"task": task_id, "agent": self._agent(agent), "ttl": ttl},
                               _to_claim))

    def claim_next(self, *, agent: str | None = None, capabilities: Iterable[str] | None = None,
                   ttl: float | None = None) -> Any:
        """The best available task this agent can do -> Claim (with .task), or None."""
        return self._call(Call("claim_next", {
            "agent": self._agent(agent), "ttl": ttl,
            "capabilities": None if capabilities is None else list(capabilities)}, _to_claim))

    def complete(self, task_id: str, *, token: int | None = None, result: Any = None,
                 agent: str | None = None) -> Any:
        return self._call(Call("complete", {"task": task_id, "agent": self._agent(agent),
                                            "token": token, "result": result}, _identity))

    def fail(self, task_id: str, *, error: str, token: int | None = None,
             agent: str | None = None) -> Any:
        return self._call(Call("fail", {"task": task_id, "agent": self._agent(agent),
                                        "token": token, "error": error}, _identity))

    def release(self, task_id: str, *, token: int | None = None, agent: str | None = None) -> Any:
        return self._call(Call("release", {"task": task_id, "agent": self._agent(agent),
                                           "token": token}, _identity))

    def renew(self, task_id: str, *, token: int | None = None, ttl: float | None = None,
              agent: str | None = None) -> Any:
        """Extend a claim during long work; raises NotOwner/StaleToken if it was lost."""
        return self._call(Call("renew", {"task": task_id, "agent": self._agent(agent),
                                         "token": token, "ttl": ttl}, _to_claim))

    progress = renew

    def publish(self, topic: str, data: Any = None, *, agent: str | None = None) -> Any:
        """Broadcast ``data`` to every subscriber as the event ``msg.<topic>``; returns
        its seq. The message is in the event log, so subscribers that were away replay it."""
        return self._call(Call("publish", {"topic": topic, "data": data, "agent": agent or self.agent},
                               _seq_of))

    def task(self, task_id: str) -> Any:
        return self._call(Call("task_get", {"task": task_id}, _identity))

    def tasks(self, *, status: str | None = None, after: str = "", limit: int = 1000) -> Any:
        return self._call(Call("task_list", {"status": status, "after": after, "limit": limit},
                               lambda body: body["tasks"]))

    def agents(self) -> Any:
        return self._call(Call("agent_list", {}, lambda body: body["agents"]))

    def status(self) -> Any:
        return self._call(Call("status", {}, _identity))

    def replay(self, since: int, *, limit: int = 1000, topics: Iterable[str] = ()) -> Any:
        return self._call(Call("replay", {"since": since, "limit": limit, "topics": list(topics)},
                               _identity))


def _seq_of(body: Any) -> int:
    return body["seq"]


def _none_if_lost(err: RemoteError) -> None:
    """claim(): another agent holding the task is an answer (None), not an error."""
    if isinstance(err, Conflict) and err.details.get("status") == "claimed":
        return None
    raise err


def default_endpoint(endpoint: str | None) -> str | None:
    return endpoint or os.environ.get("ZMESH_BROKER") or None


class LeaseState:
    """What the client knows of its own lease; shared by both heartbeat loops."""

    def __init__(self, agent: str | None, capabilities: Iterable[str], metadata: dict[str, Any] | None,
                 ttl: float | None) -> None:
        self.agent = agent
        self.capabilities = list(capabilities)
        self.metadata = dict(metadata or {})
        self.ttl = ttl
        self.lease: int | None = None
        self.lost = 0

    def register_call(self) -> Call[dict[str, Any]]:
        return Call("register", {"agent": self.agent, "capabilities": self.capabilities,
                                 "metadata": self.metadata, "ttl": self.ttl}, _identity)

    def registered(self, body: dict[str, Any]) -> None:
        self.lease = body["lease"]
        self.ttl = body["ttl"]

    def heartbeat_call(self) -> Call[dict[str, Any]]:
        return Call("heartbeat", {"agent": self.agent, "lease": self.lease}, _identity)

    @property
    def interval(self) -> float:
        return max(0.05, (self.ttl or 30.0) / 3)
