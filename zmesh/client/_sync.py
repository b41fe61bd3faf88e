"""``Client``: the blocking driver of ClientCore (one DEALER guarded by a lock, a heartbeat
thread, SUB sockets owned by the thread that iterates them; for an agent that registers
message callbacks, a push thread that reads what the broker pushes while no call is reading,
and a dispatch thread that runs the callbacks outside the lock, so a callback may call the
client; an agent that only calls ``receive()`` reads its pushes in that call's own thread,
one thread hand-over less per message).

Rules: a client given an agent registers it (with its own TTL, capabilities and metadata)
and starts the heartbeat before its first other request, whether or not ``connect()`` or
``with`` was used; ``zmq.ZMQError`` never leaves this module (a socket failure is
``Unreachable``, an endpoint libzmq refuses is ``InvalidArgument``).
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import threading
import time
import uuid
from typing import Any, Callable, Iterable

import zmq

from ..errors import InvalidArgument, LeaseExpired, NoReply, ProtocolError, Unreachable, ZmeshError
from ..transport.sockets import NOBLOCK, recv_frames, send_frames
from ._api import NO_CONNECT_OPS, Api, LeaseState, check_bool, check_timeout
from ._inbox import Inbox, Message, Receiver
from ._finder import Finder
from ._sync_events import EventStreams
from ._protocol import (DEALER_OPTIONS, Call, ClientCore, Recv, Send, connect_socket,
                        curve_settings, default_endpoint)

log = logging.getLogger("zmesh.client")


class Client(EventStreams, Api):
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
        self.info: dict[str, Any] = {}
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
    def connect(self) -> "Client":
        """hello (+ register and heartbeat thread when an agent is set). Idempotent."""
        with self._connect_lock:
            if self.connected:
                return self
            self._stop.clear()
            self.info = self.hello()
            if self.agent:
                self._lease.registered(self._call(self._lease.register_call()))
                if self._heartbeat:
                    self._hb_thread = threading.Thread(target=self._heartbeat_loop, daemon=True,
                                                       name=f"zmesh-heartbeat-{self.agent}")
                    self._hb_thread.start()
            self.connected = True
            return self

    def __enter__(self) -> "Client":
        try:
            return self.connect()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: Any) -> None:
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

    # ------------------------------------------------------------ the driver
    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            sock = connect_socket(self._ctx, zmq.DEALER, DEALER_OPTIONS + self._curve, self.endpoint)
            self._core.secure = bool(self._curve)
            self._sock = sock
            self._poller = zmq.Poller()  # kept: Socket.poll would build one per call
            self._poller.register(sock, zmq.POLLIN)
        return self._sock

    def _call(self, call: Call[Any]) -> Any:
        if not self.connected and self.agent and call.op not in NO_CONNECT_OPS:
            self.connect()  # the agent's own lease, not an implicit one with the broker's TTL
        req_id = self._core.new_req_id()
        dialled = self.endpoint
        try:
            return self._exchange(call, req_id)
        except Unreachable:
            if not self._moved(dialled):
                raise
        return self._exchange(call, req_id)  # the same request, to where the broker is now

    def _flow(self, flow: Any) -> Any:
        """Run a flow of calls (see _admin_api.Flow) to its result."""
        try:
            call = next(flow)
            while True:
                call = flow.send(self._call(call))
        except StopIteration as done:
            return done.value

    def _moved(self, dialled: str) -> bool:
        """After a request to ``dialled`` went unanswered: look for this client's mesh again;
        if its broker is elsewhere now, switch the socket there and say so. False when the
        client was given its endpoint, is closing, or the broker is where it was (or nowhere)."""
        if self._finder is None or self._stop.is_set():
            return False
        with self._lock:
            old = self.endpoint
            if old != dialled:
                return True  # another thread followed the broker meanwhile
            try:
                endpoint, curve = self._finder.find(self._core.timeout)
            except Unreachable as exc:
                log.info("broker at %s silent and no broker of mesh '%s' answered discovery: %s", old,
                         self._finder.mesh, exc.message)
                return False
            if endpoint == old:
                return False
            if self._sock is not None:
                self._sock.close(linger=0)
                self._sock = None
            self.endpoint, self._curve = endpoint, curve
            self._socket()
            log.info("broker of mesh '%s' moved from %s to %s (broker %s); following it", self._finder.mesh, old,
                     endpoint, self._finder.broker.broker_id if self._finder.broker else "?")
        self._wake_pump()
        self._wake_direct()
        return True

    def _exchange(self, call: Call[Any], req_id: bytes) -> Any:
        with self._lock:
            sock = self._socket()
            flow = self._core.exchange(call.op, call.body, self.endpoint, call.wait, req_id)
            try:
                action = next(flow)
                while True:
                    if isinstance(action, Send):
                        try:
                            send_frames(sock, action.frames, NOBLOCK)
                        except zmq.Again:
                            pass  # queue full while disconnected: the flow times out
                        action = flow.send(None)
                    else:
                        assert isinstance(action, Recv)
                        got = recv_frames(sock) if self._poller.poll(action.timeout * 1000) else None  # type: ignore[arg-type]  # ms, a float
                        action = flow.send(got)
            except StopIteration as stop:
                reply = stop.value
            except zmq.ZMQError as exc:
                raise Unreachable(f"socket error talking to {self.endpoint}: {exc} (op {call.op})",
                                  {"endpoint": self.endpoint, "op": call.op}) from None
            finally:
                pushed = self._take_pushes(sock) if self._push_threads or self._direct else self._core.take_pushed()
        if pushed:
            self._route(pushed)
        return self._core.result(call, reply)

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
        for target in self._inbox.route_all(pushed):
            self._dispatch_q.put(target)
        if pushed and self._direct:  # a receive() waits on the socket, not on the inbox
            self._wake_direct()

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
            if sock is None:
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

    def _receiving(self, what: str, *, pump: bool = True) -> None:
        """Pushes are read while idle only once the client asks for messages: a client that
        never does pays nothing per call (pushes that reach it wait in its buffer). Only
        callbacks need the push thread (``pump``); receive() reads in its own thread."""
        if not self.agent:
            raise InvalidArgument(f"{what} needs an agent: messages are pushed to an agent's connection",
                                  {"field": "agent"})
        self.connect()
        if pump:
            with self._connect_lock:
                self._start_pushes()

    def on_message(self, callback: Callable[[Message], Any], filter: Any = None) -> Receiver:
        """Call ``callback(message)`` for every message pushed to this agent that matches
        ``filter`` (a dict of field -> value(s), or a callable); several receivers each get
        their copy. Callbacks run one at a time on the client's callback thread."""
        self._receiving("on_message")
        receiver, backlog = self._inbox.add(callback, filter, tasks=False)
        for msg in backlog:
            self._dispatch_q.put((callback, msg))
        return receiver

    def on_task(self, callback: Callable[[Message], Any], filter: Any = None) -> Receiver:
        """Call ``callback(message)`` for every task assigned to this agent (``assign``):
        ``message.claim`` is the claim the broker took on this agent's lease."""
        self._receiving("on_task")
        receiver, backlog = self._inbox.add(callback, filter, tasks=True)
        for msg in backlog:
            self._dispatch_q.put((callback, msg))
        return receiver

    def receive(self, timeout: float | None = None) -> Message | None:
        """The next pushed message no receiver took, waiting up to ``timeout`` seconds
        (None: until one comes); None when none came."""
        timeout = check_timeout("timeout", timeout, allow_none=True)
        self._receiving("receive", pump=False)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            msg = self._inbox.take()
            if msg is not None:
                return msg
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            if self._push_threads:  # callbacks run: the push thread reads, this one waits
                with self._inbox.arrived:
                    if not self._inbox.buffer:
                        self._inbox.arrived.wait(left)
            elif not self._read_here(left):
                return None

    def request(self, agent: str, subject: str, body: Any = None, *, timeout: float = 5.0,
                **options: Any) -> Message:
        """Send a ``request`` to ``agent`` and wait for its ``reply`` (the message carrying
        this request's correlation id). No reply within ``timeout``: NoReply; a reply that
        comes later is not lost (it goes to the receivers, or receive())."""
        timeout = check_timeout("timeout", timeout)  # type: ignore[assignment]
        self._receiving("request")
        cid = uuid.uuid4().hex
        done = threading.Event()
        box: list[Message] = []
        def arrived(msg: Message) -> None:
            box.append(msg)
            done.set()

        with self._inbox.lock:
            self._inbox.waiters[cid] = arrived
        try:
            sent = self.send(subject, body, to=agent, type="request", correlation_id=cid, **options)
            if not done.wait(timeout):
                raise NoReply(f"no reply from agent '{agent}' within {timeout:g} s (request {sent['id']}, "
                              f"correlation id {cid})", {"agent": agent, "id": sent["id"], "correlation_id": cid})
            return box[0]
        finally:
            with self._inbox.lock:
                self._inbox.waiters.pop(cid, None)

    def read(self, *, peek: bool = False, **filters: Any) -> list[dict[str, Any]]:
        """This agent's messages (filters as ``messages``), marked read unless ``peek``."""
        filters.setdefault("agent", self._agent(None))
        found = self.messages(**filters)
        if not peek and found:
            self.mark_read([m["id"] for m in found], agent=filters["agent"])
        return found  # type: ignore[no-any-return]

    def watch_task(self, task: str, callback: Callable[[Message], Any]) -> Receiver:
        """Receive the notifications streamed for ``task`` (notify_task) in ``callback``."""
        self._receiving("watch_task")
        receiver = self.on_message(callback, {"group": f"task:{task}"})
        self.join(f"task:{task}")
        return receiver

    # ------------------------------------------------------------ heartbeat
    def keepalive(self) -> None:
        """Renew this client's own lease now, as the heartbeat thread does: for a client made
        with ``heartbeat=False`` whose owner renews it. A lapsed lease is registered again and
        ``on_lease_lost`` is told; its claims are gone. Raises what the broker answered."""
        if not self.connected:
            self.connect()
            return
        try:
            self._call(self._lease.heartbeat_call())
        except LeaseExpired as exc:
            self._lease.lost += 1
            log.warning("lease of %s lapsed; its claims were released; registering again", self.agent)
            if self._on_lease_lost:
                self._on_lease_lost(exc)
            self._lease.registered(self._call(self._lease.register_call()))

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self._lease.interval):
            try:
                self.keepalive()
            except ZmeshError as exc:
                log.warning("heartbeat of %s failed: %s", self.agent, exc)
                if self._on_hb_error:
                    self._on_hb_error(exc)
