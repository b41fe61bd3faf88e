"""``Client``: the blocking driver. Every op and flow is defined once (_api.py and the
modules it includes); this module only does their I/O: one DEALER guarded by a lock, a
heartbeat thread, SUB sockets owned by the thread that iterates them; for an agent that
registers message callbacks, a push thread that reads what the broker pushes while no call
is reading, and a dispatch thread that runs the callbacks outside the lock, so a callback
may call the client; an agent that only calls ``receive()`` reads its pushes in that call's
own thread, one thread hand-over less per message.

Rules: a client given an agent registers it (with its own TTL, capabilities and metadata)
and starts the heartbeat before its first other request, whether or not ``connect()`` or
``with`` was used; ``zmq.ZMQError`` never leaves this module (a socket failure is
``Unreachable``, an endpoint libzmq refuses is ``InvalidArgument``); ``close()`` ends every
wait of a flow at once (a Sleep answers True) and every stream at its next step.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

import zmq

from ..errors import ProtocolError, Unreachable, ZmeshError
from ..protocol.records import Hello
from ..transport.sockets import NOBLOCK, recv_frames, send_frames
from ._api import NO_CONNECT_OPS, LeaseState
from ._checks import check_bool, check_receiver, check_timeout
from ._events import Deliver, Poll, Subscribe
from ._finder import Finder
from ._flows import AwaitPush, Flow, Invoke, Sleep, WaitFor
from ._inbox import Inbox, Message, Pending
from ._live_api import LiveApi
from ._protocol import (
    DEALER_OPTIONS,
    SUB_OPTIONS,
    Call,
    ClientCore,
    Recv,
    Send,
    connect_socket,
    curve_settings,
    default_endpoint,
)

T = TypeVar("T")

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

log = logging.getLogger("zmesh.client")


class Client(LiveApi):
    """A blocking zmesh client. With ``agent`` it registers on connect (or on its first
    request) and a background thread heartbeats every ttl/3 so the lease (and every claim
    on it) stays alive.

    ``endpoint`` None means ``$ZMESH_BROKER``, else zeroconf discovery on the LAN of a broker
    of ``mesh`` (else ``$ZMESH_MESH``, else ``default``), its key checked against
    ``server_key`` or the pin in ``known_hosts`` (zmesh/discovery/trust.py). A client made by
    discovery follows its broker: when a request gets no answer it looks for the mesh again
    and, if the broker is elsewhere now, moves there and sends the request again.
    ``timeout`` bounds every call (seconds); a silent broker raises Unreachable.
    ``on_lease_lost(err)`` is called from the heartbeat thread when the broker says the lease
    lapsed (its claims are gone); the client then registers again.
    Arguments are checked here: a bad one raises InvalidArgument or BadRequest naming it.
    """

    def __init__(self, endpoint: str | None = None, *, agent: str | None = None,
                 capabilities: Iterable[str] = (), metadata: dict[str, Any] | None = None,
                 ttl: float | None = None, timeout: float = 5.0, heartbeat: bool = True,
                 on_lease_lost: Callable[[ZmeshError], None] | None = None,
                 on_heartbeat_error: Callable[[ZmeshError], None] | None = None,
                 context: zmq.Context | None = None, server_key: str | None = None,
                 key: str | None = None, mesh: str | None = None, known_hosts: str | None = None) -> None:
        timeout = check_timeout("timeout", timeout)  # type: ignore[assignment]
        curve = curve_settings(server_key, key)
        self._lease = LeaseState(agent, capabilities, metadata, ttl)
        endpoint = default_endpoint(endpoint)
        #: set when the broker was found by discovery: the client follows it when it moves
        self._finder: Finder | None = None
        if endpoint is None:
            self._finder = Finder(mesh, curve, known_hosts)
            endpoint, self._curve = self._finder.find(timeout)
        else:
            self._curve = curve.options()
        self.endpoint: str = endpoint
        self.agent = agent
        self._core = ClientCore(timeout=timeout)
        self._core.follows = self._finder is not None
        self._ctx = context or zmq.Context.instance()
        self._lock = threading.RLock()
        self._connect_lock = threading.RLock()
        self._sock: zmq.Socket | None = None
        self._poller = zmq.Poller()
        self._stop = threading.Event()
        self._hb_thread: threading.Thread | None = None
        self._heartbeat = check_bool("heartbeat", heartbeat)
        self._on_lease_lost = on_lease_lost
        self._on_hb_error = on_heartbeat_error
        self._subs: list[threading.Thread] = []
        self.info: Hello = cast(Hello, {})
        self.connected = False
        self._inbox = Inbox()
        self._dispatch_q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._push_threads: list[threading.Thread] = []
        self._wake: tuple[socket.socket, socket.socket] | None = None
        #: receive() calls waiting on the socket in their own thread (no push thread), and
        #: the pair another thread writes to when it read a push for them
        self._direct = 0
        self._direct_wake: tuple[socket.socket, socket.socket] | None = None

    # ------------------------------------------------------------ lifecycle
    def connect(self) -> Self:
        """hello (+ register and heartbeat thread when an agent is set). Idempotent."""
        with self._connect_lock:
            if self.connected:
                return self
            self._stop.clear()
            self._flow(self._lease.connect_flow(self))
            if self.agent and self._heartbeat:
                beats = self._lease.heartbeat_flow(self.keepalive, self._on_hb_error)
                self._hb_thread = threading.Thread(target=self._flow, args=(beats,), daemon=True,
                                                   name=f"zmesh-heartbeat-{self.agent}")
                self._hb_thread.start()
            self.connected = True
            return self

    def __enter__(self) -> Self:
        try:
            return self.connect()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, *, unregister: bool = True) -> None:
        """Stop the heartbeat, unregister the agent (its claims are released at once)
        unless ``unregister=False``, and close the sockets."""
        self._stop.set()
        if self._hb_thread is not None:
            self._hb_thread.join(timeout=self._core.timeout + 1)
            self._hb_thread = None
        for t in self._subs:
            t.join(timeout=2)
        self._subs = []
        self._stop_pushes()
        if unregister and self.connected and self.agent:
            try:
                self.unregister()
            except ZmeshError as exc:
                log.warning("unregister of %s failed on close: %s", self.agent, exc)
        self._wake_direct()  # a receive() waiting on the socket returns None
        with self._lock:
            if self._sock is not None:
                self._sock.close(linger=0)
                self._sock = None
            if self._direct_wake is not None and not self._direct:
                for end in self._direct_wake:
                    end.close()
                self._direct_wake = None
        self.connected = False

    @property
    def lease(self) -> int | None:
        return self._lease.lease

    def _is_closing(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------ the driver
    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            sock = connect_socket(self._ctx, zmq.DEALER, DEALER_OPTIONS + self._curve, self.endpoint)
            self._core.secure = bool(self._curve)
            self._sock = sock
            self._poller = zmq.Poller()  # kept: Socket.poll would build one per call
            self._poller.register(sock, zmq.POLLIN)
        return self._sock

    def _call(self, call: Call[T]) -> T:
        """One request (ClientCore.exchange) on the DEALER, under the lock."""
        if not self.connected and self.agent and call.op not in NO_CONNECT_OPS:
            self.connect()  # the agent's own lease, not an implicit one with the broker's TTL
        with self._lock:
            sock = self._socket()
            flow = self._core.exchange(call.op, call.body, self.endpoint, call.wait)
            try:
                action = next(flow)
                while True:
                    try:
                        if isinstance(action, Send):
                            try:
                                send_frames(sock, action.frames, NOBLOCK)
                            except zmq.Again:
                                pass  # queue full while disconnected: the flow times out
                            action = flow.send(None)
                        elif isinstance(action, Recv):
                            action = flow.send(recv_frames(sock) if self._poller.poll(int(action.timeout * 1000))
                                               else None)
                        else:  # Follow
                            moved = self._follow(action.dialled)
                            sock = self._socket()
                            action = flow.send(moved)
                    except zmq.ZMQError as exc:
                        action = flow.throw(Unreachable(f"socket error talking to {self.endpoint}: {exc} (op {call.op})",
                                                        {"endpoint": self.endpoint, "op": call.op}))
            except StopIteration as stop:
                reply = stop.value
            finally:
                pushed = self._take_pushes(sock) if self._push_threads or self._direct else self._core.take_pushed()
        if pushed:
            self._route(pushed)
        return self._core.result(call, reply)

    def _follow(self, dialled: str) -> str | None:
        """(Under the lock.) The broker at ``dialled`` went silent: if discovery finds it
        elsewhere, the socket moves there (the push reader and a waiting receive() are told);
        the endpoint it dials now, or None."""
        if self._finder is None or self._stop.is_set():
            return None
        found = self._finder.follow(dialled, self._core.timeout)
        if found is None:
            return None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        self.endpoint, self._curve = found
        self._socket()
        self._wake_pump()
        self._wake_direct()
        return self.endpoint

    def _flow(self, flow: Flow[T]) -> T:
        """Run a flow (_flows.py) to its result: each action answered, each failure thrown in."""
        answer: Any = None
        error: Exception | None = None
        try:
            while True:
                try:
                    action = flow.send(answer) if error is None else flow.throw(error)
                except StopIteration as done:
                    return done.value
                answer, error = None, None
                try:
                    answer = self._act(action)
                except Exception as exc:  # noqa: BLE001 - thrown into the flow: its to handle, or to raise
                    error = exc
        finally:
            flow.close()

    def _act(self, action: Any) -> Any:
        if isinstance(action, Call):
            return self._call(action)
        if isinstance(action, Invoke):
            return action.fn(*action.args, **action.kwargs)
        if isinstance(action, Sleep):
            return self._stop.wait(action.seconds)
        if isinstance(action, WaitFor):
            return self._wait_for(action.pending, action.timeout)
        if isinstance(action, AwaitPush):
            return self._await_push(action.seconds)
        raise TypeError(f"not an action: {action!r}")

    def _stream(self, flow: Generator[Any, Any, None]) -> Iterator[Any]:
        """Run a stream (_events.py): what it delivers is yielded; its SUB socket is this
        generator's, closed when it ends."""
        sub: zmq.Socket[bytes] | None = None
        poller = zmq.Poller()  # kept: Socket.poll would build one per event
        answer: Any = None
        error: Exception | None = None
        try:
            while True:
                try:
                    action = flow.send(answer) if error is None else flow.throw(error)
                except StopIteration:
                    return
                answer, error = None, None
                if isinstance(action, Deliver):
                    yield action.event
                    continue
                try:
                    if isinstance(action, Poll):
                        assert sub is not None
                        answer = recv_frames(sub) if poller.poll(int(action.timeout * 1000)) else None
                    elif isinstance(action, Subscribe):
                        if sub is not None:
                            sub.close(linger=0)
                        sub, poller = None, zmq.Poller()
                        if action.endpoint is not None:
                            sub = connect_socket(self._ctx, zmq.SUB, SUB_OPTIONS + self._curve, action.endpoint)
                            poller.register(sub, zmq.POLLIN)
                    else:
                        answer = self._act(action)
                except zmq.ZMQError as exc:
                    error = Unreachable(f"event socket error: {exc}", {"endpoint": self.endpoint})
                except Exception as exc:  # noqa: BLE001 - thrown into the flow
                    error = exc
        finally:
            flow.close()
            if sub is not None:
                sub.close(linger=0)

    def _background(self, flow: Generator[Any, Any, None], name: str) -> threading.Thread:
        """A thread running a subscription (its callbacks are Invoked) until close()."""
        def run() -> None:
            for _ in self._stream(flow):
                pass
        thread = threading.Thread(target=run, daemon=True, name=name)
        thread.start()
        self._subs.append(thread)
        return thread

    def _wait_for(self, pending: Pending, timeout: float) -> Message | None:
        done = threading.Event()
        pending.wake = done.set
        if pending.message is None:
            done.wait(timeout)
        return pending.message

    # ------------------------------------------------------------ pushes
    def _start_pushes(self) -> None:
        if self._push_threads:
            return
        self._wake = socket.socketpair()
        self._wake[0].setblocking(False)
        name = f"zmesh-push-{self.agent}"
        self._push_threads = [threading.Thread(target=self._pump, daemon=True, name=name),
                              threading.Thread(target=self._dispatch, daemon=True, name=name + "-callbacks")]
        for thread in self._push_threads:
            thread.start()

    def _stop_pushes(self) -> None:
        if not self._push_threads:
            return
        assert self._wake is not None
        self._wake[1].send(b"x")
        self._dispatch_q.put(None)
        for thread in self._push_threads:
            if thread is not threading.current_thread():
                thread.join(timeout=self._core.timeout + 1)
        self._push_threads = []
        for end in self._wake:
            end.close()
        self._wake = None

    def _take_pushes(self, sock: zmq.Socket) -> list[dict[str, Any]]:
        """Under the lock: read what arrived and nobody asked for (pushes; a stray reply is
        dropped), so a push is never left unread when the lock is released (the socket's
        fd signals only new arrivals)."""
        try:
            while int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                try:
                    self._core.accept(recv_frames(sock, NOBLOCK))
                except ProtocolError as exc:
                    log.warning("unreadable message from the broker dropped: %s", exc)
        except zmq.ZMQError as exc:
            log.debug("push read: %s", exc)
        return self._core.take_pushed()

    def _route(self, pushed: list[dict[str, Any]]) -> None:
        self._dispatch_all(self._inbox.route_all(pushed))
        if pushed and self._direct:  # a receive() waits on the socket, not on the inbox
            self._wake_direct()

    def _dispatch_all(self, targets: list[tuple[Callable[[Message], Any], Message]]) -> None:
        for target in targets:
            self._dispatch_q.put(target)

    def _wake_direct(self) -> None:
        pair = self._direct_wake
        if pair is not None:
            try:
                pair[1].send(b"x")
            except OSError:  # already signalled (buffer full), or closed
                pass

    def _read_here(self, left: float | None) -> bool:
        """Wait up to ``left`` seconds for pushes in this thread (select on the socket's fd,
        outside the lock, as the push thread does) and route what came. False when the
        client was closed meanwhile."""
        with self._lock:
            sock = self._sock
            # closing: close() wakes a wait it finds, but a wait begun after that wake-up,
            # before the socket is gone, would sleep its whole timeout
            if sock is None or self._stop.is_set():
                return False
            pushed = self._take_pushes(sock)
            if not pushed:
                self._direct += 1
                fd = int(sock.getsockopt(zmq.FD))
                if self._direct_wake is None:
                    self._direct_wake = socket.socketpair()
                    for end in self._direct_wake:
                        end.setblocking(False)
                wake = self._direct_wake[0]
        if not pushed:
            try:
                select.select([fd, wake.fileno()], [], [], left)
                while True:
                    wake.recv(64)
            except (BlockingIOError, InterruptedError):
                pass
            except (OSError, ValueError):  # closed while waiting
                return False
            finally:
                with self._lock:
                    self._direct -= 1
            with self._lock:
                if self._sock is None:
                    return False
                pushed = self._take_pushes(self._sock)
        self._route(pushed)
        return True

    def _wake_pump(self) -> None:
        """Make the push thread look at the socket again (it was replaced: the broker moved)."""
        pair = self._wake
        if pair is not None:
            try:
                pair[1].send(b"m")
            except OSError:  # already signalled, or closed
                pass

    def _pump(self) -> None:
        """Read pushes while no call is reading (woken by the socket's fd, or by the wake
        pair when the client closes or the socket is replaced)."""
        assert self._wake is not None
        wake = self._wake[0]
        with self._lock:
            self._socket()
        while not self._stop.is_set():
            with self._lock:  # first what arrived before the thread ran, then each wake-up
                if self._sock is None:
                    return
                fd = int(self._sock.getsockopt(zmq.FD))
                pushed = self._take_pushes(self._sock)
            self._route(pushed)
            try:
                select.select([fd, wake.fileno()], [], [])
                while True:
                    wake.recv(64)
            except (BlockingIOError, InterruptedError):
                pass
            except (OSError, ValueError):  # the socket was replaced (and closed) meanwhile
                continue

    def _dispatch(self) -> None:
        """Run message callbacks one at a time, outside the socket lock."""
        while True:
            item = self._dispatch_q.get()
            if item is None:
                return
            callback, msg = item
            try:
                callback(msg)
            except Exception:  # a callback bug must not stop the others
                log.exception("message callback failed for %s", msg.id)

    def _receiving(self, what: str, pump: bool = True) -> None:
        """Pushes are read while idle only once the client asks for messages: a client that
        never does pays nothing per call (pushes that reach it wait in its buffer). Only
        callbacks need the push thread (``pump``); receive() reads in its own thread."""
        check_receiver(self.agent, what)
        self.connect()
        if pump:
            with self._connect_lock:
                self._start_pushes()

    def _await_push(self, left: float | None) -> bool:
        """receive()'s wait: on the inbox when the push thread reads, else on the socket."""
        if self._push_threads:  # callbacks run: the push thread reads, this one waits
            with self._inbox.arrived:
                if not self._inbox.buffer:
                    self._inbox.arrived.wait(left)
            return True
        return self._read_here(left)
