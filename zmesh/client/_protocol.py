"""The client's request logic with no I/O: request ids, checks before sending, retries,
reply matching, endpoint resolution. ``Client`` and ``AsyncClient`` only drive it.

A request is a generator (:meth:`ClientCore.exchange`) that yields :class:`Send`,
:class:`Recv` and :class:`Follow` actions and returns the reply; the sync driver runs it
with blocking ``poll``, the async driver with ``await``. So retry, matching and following
rules exist once.

Rules: a request is checked with the broker's own validation before anything is sent
(a bad field or an oversized message is refused at once with the broker's code, not after
a timeout); a retry reuses the request id (the broker answers it with the original reply);
a reply to another request is never taken for ours, nor is a push (a message the broker
pushed to this agent: kept in ``pushed`` for the inbox, whatever the call was waiting
for); a transport failure is ``Unreachable``. A client that found its broker by discovery
(``follows``) asks its driver once per request, when the broker went silent or its socket
failed, to look for the broker again (:class:`Follow`); if the broker moved, the same
request (same id) is sent to where it is now, with a fresh timeout.

How a driver answers: Send by sending the frames (a full queue drops them: the retry
comes), Recv with the frames that arrived within its timeout or None, Follow with the
endpoint the client's socket now dials (None: the broker did not move), and a socket
error by throwing ``Unreachable`` into the flow.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload
from urllib.parse import urlsplit

import zmq

from .. import protocol
from ..errors import InvalidArgument, ProtocolError, RemoteError, Unreachable, from_wire
from ..protocol import Reply
from ..protocol.records import ClaimGrant, Task
from ..transport.endpoint import check_endpoint

T = TypeVar("T")


@dataclass(frozen=True)
class Claim:
    """A claim the broker granted. ``token`` is the fencing token to pass to complete/fail."""

    task_id: str
    token: int
    #: wall-clock time (time.time()) when the claim lapses unless renewed; None: never
    expires_at: float | None
    agent: str = ""
    lease: int = 0
    task: Task | None = None
    #: seconds the broker gave the claim when it answered (what expires_at is computed from)
    expires_in: float | None = None


@dataclass(slots=True)  # one per request: a frozen one costs a setattr call per field
class Send:
    frames: list[bytes]


@dataclass(slots=True)  # one per request: a frozen one costs a setattr call per field
class Recv:
    timeout: float  # seconds


@dataclass(slots=True)
class Follow:
    """The broker at ``dialled`` did not answer: look for it again (discovery) and, if it
    moved, point the client's socket there (answer: the new endpoint, or None)."""

    dialled: str


@dataclass(slots=True)  # one per request: a frozen one costs a setattr call per field
class Call(Generic[T]):
    """One op: what to send and how to turn the reply body into the result."""

    op: str
    body: dict[str, Any]
    convert: Callable[[Any], T]
    #: turns some refusals into a result (claim: lost race -> None); re-raises the rest
    on_error: Callable[[RemoteError], T] | None = None
    #: seconds the broker may hold the request before answering (a reserve's wait_s):
    #: added to the client's timeout for this call
    wait: float = 0.0


def _identity(body: Any) -> Any:
    return body


@overload
def _to_claim(body: ClaimGrant) -> Claim: ...
@overload
def _to_claim(body: ClaimGrant | None) -> Claim | None: ...
def _to_claim(body: ClaimGrant | None) -> Claim | None:
    """The Claim of a claim, claim_next or renew reply (claim_next's null: None)."""
    if body is None:
        return None
    expires = body.get("expires_in")
    return Claim(body["task"], body["token"], None if expires is None else time.time() + expires,
                 body.get("agent", ""), body.get("lease", 0), body.get("task_record"), expires)


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


#: what an unanswered secure request may also mean (CurveZMQ drops a handshake it refuses)
SILENT_CURVE = ("; with CurveZMQ a broker also stays silent to a client key it does not admit, or when "
                "the server key pinned here is not its key")


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
        #: push bodies read from the socket and not yet handed to the inbox
        self.pushed: list[dict[str, Any]] = []
        #: the socket speaks CurveZMQ (the driver says so): an unanswered request may be a
        #: refused key, since a CURVE broker answers an unknown key with silence
        self.secure = False
        #: the broker was found by discovery (the driver says so): an unanswered request
        #: makes the client look for it again (Follow)
        self.follows = False

    def take_pushed(self) -> list[dict[str, Any]]:
        pushed, self.pushed = self.pushed, []
        return pushed

    def new_req_id(self) -> bytes:
        return self._prefix + next(self._counter).to_bytes(8, "big")

    def exchange(self, op: str, body: dict[str, Any], endpoint: str, wait: float = 0.0,
                 req_id: bytes | None = None) -> Generator[Send | Recv | Follow, Any, Reply]:
        """One request until its reply: resent with the same id every retry_interval (the
        broker answers a retry from memory, and a waiting request keeps its place), given
        up after the client's timeout plus ``wait``. A client that ``follows`` its broker
        asks once (Follow) where the broker is now, and sends the same request there with
        the timeout started again. ``req_id``: the id of an earlier try of this request."""
        req_id = req_id or self.new_req_id()
        frames = protocol.prepare_request(req_id, op, body)  # raises before anything is sent
        timeout = self.timeout + wait
        follow = self.follows
        start = now = next_send = self._clock()
        while True:
            try:
                if now - start >= timeout:
                    raise Unreachable(
                        f"no reply from the broker at {endpoint} within {timeout:g} s (op {op})"
                        + (SILENT_CURVE if self.secure else ""), {"endpoint": endpoint, "op": op})
                if now >= next_send:
                    yield Send(frames)
                    next_send = now + self.retry_interval
                else:
                    got = yield Recv(min(next_send, start + timeout) - now)
                    if got is not None:
                        reply = self.accept(got)
                        if reply is not None and reply.req_id == req_id:
                            return reply
                        # else a push (kept in ``pushed``) or a late reply to an earlier
                        # request that timed out (not ours: dropped)
            except Unreachable:  # silent, or the driver's socket failed
                if not follow:
                    raise
                follow = False
                moved = yield Follow(endpoint)
                if moved is None:
                    raise
                endpoint = moved
                start = next_send = self._clock()
            now = self._clock()

    def accept(self, frames: list[bytes]) -> Reply | None:
        """What arrived on the DEALER: a push is kept in ``pushed`` for the driver to hand
        to the inbox (None is returned); a reply is returned."""
        incoming = protocol.decode_incoming(frames)
        if isinstance(incoming, protocol.Push):
            self.pushed.append(incoming.body)
            return None
        return incoming

    @staticmethod
    def result(call: Call[T], reply: Reply) -> T:
        if not reply.ok:
            err = from_wire(reply.body)
            if call.on_error is not None:
                return call.on_error(err)
            raise err
        return call.convert(reply.body)


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


def connect_socket(ctx: Any, kind: int, options: Any, endpoint: str) -> Any:
    """A configured socket connected to ``endpoint``; libzmq's refusal becomes ours
    (both drivers make their sockets here)."""
    sock = configure(ctx.socket(kind), options)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise InvalidArgument(f"cannot connect to {endpoint}: {exc}", {"field": "endpoint"}) from None
    return sock


@dataclass(frozen=True)
class Curve:
    """A client's CurveZMQ settings as given: the broker's public key (None: not pinned) and
    this client's key pair (None: none), with the names they came by (for errors)."""

    server: bytes | None
    pair: Any  # keys.KeyPair | None
    server_field: str
    key_field: str

    def options(self, server: bytes | None = None) -> tuple[tuple[int, Any], ...]:
        """The socket options for a broker whose key is ``server`` (default: the given
        one). Neither key: () (security off). One without the other is refused, naming
        the missing one."""
        server = server if server is not None else self.server
        if server is None and self.pair is None:
            return ()
        if server is None or self.pair is None:
            missing = self.server_field if server is None else self.key_field
            raise InvalidArgument(f"{missing} is needed too: a secure broker takes its public key and this client's "
                                  "key pair together", {"field": missing})
        return ((zmq.CURVE_SERVERKEY, server), (zmq.CURVE_PUBLICKEY, self.pair.public),
                (zmq.CURVE_SECRETKEY, self.pair.secret))


def curve_settings(server_key: str | None, key: str | None) -> Curve:
    """The arguments, else $ZMESH_SERVER_KEY (the broker's public key: a file or Z85) and
    $ZMESH_KEY (this client's .key_secret file), each read and checked; they are not
    required together here (a client that discovers its broker may learn its key)."""
    from ..transport.keys import load_pair, load_public

    given = server_key is not None or key is not None  # arguments name arguments, env names env
    server_field = "server_key" if given else "ZMESH_SERVER_KEY"
    key_field = "key" if given else "ZMESH_KEY"
    server_key = server_key if server_key is not None else (os.environ.get("ZMESH_SERVER_KEY") or None)
    key = key if key is not None else (os.environ.get("ZMESH_KEY") or None)
    return Curve(None if server_key is None else load_public(server_key, server_field),
                 None if key is None else load_pair(key, key_field), server_field, key_field)


def curve_options(server_key: str | None, key: str | None) -> tuple[tuple[int, Any], ...]:
    """The socket options that make a client a CURVE client of a secure broker: from the
    arguments, else $ZMESH_SERVER_KEY and $ZMESH_KEY. Neither: () (security off). One without
    the other is refused, naming the missing one."""
    return curve_settings(server_key, key).options()


def default_endpoint(endpoint: str | None) -> str | None:
    """The endpoint given, else $ZMESH_BROKER, else None (discover); checked either way."""
    if endpoint is not None:
        return check_endpoint(endpoint, field="endpoint")
    env = os.environ.get("ZMESH_BROKER")
    return check_endpoint(env, field="ZMESH_BROKER") if env else None


