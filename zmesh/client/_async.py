"""``AsyncClient``: the asyncio driver of ClientCore. Same names as Client; every call is
awaited (``async with``, ``await c.claim(...)``, ``async for ev in c.events()``).

Rules: the same as Client's (implicit connect registers the agent with its own lease and
starts the heartbeat; ``zmq.ZMQError`` never leaves this module; an agent's client reads
pushes in a task while no call is reading and runs message callbacks in another)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

import zmq
import zmq.asyncio

from ..errors import InvalidArgument, LeaseExpired, NoReply, ProtocolError, SnapshotRequired, Unreachable, ZmeshError
from ..protocol import Event
from ._api import NO_CONNECT_OPS, Api, LeaseState, check_bool, check_timeout
from ._events import Deliver, Poll, Sleep, check_callback, check_flow_args, new_flow
from ._inbox import Inbox, Message, Receiver
from ._roster import Roster
from ._finder import Finder
from ._protocol import (DEALER_OPTIONS, SUB_OPTIONS, Call, ClientCore, Recv, Send, connect_socket,
                        curve_settings, default_endpoint, resolve_pub)

log = logging.getLogger("zmesh.client")


class AsyncClient(Api):
    """The asyncio twin of :class:`zmesh.Client` (see it for the arguments). With no endpoint
    the broker is discovered on connect (or the first call), and followed when it moves."""

    def __init__(self, endpoint: str | None = None, *, agent: str | None = None,
                 capabilities: Iterable[str] = (), metadata: dict[str, Any] | None = None,
                 ttl: float | None = None, timeout: float = 5.0, heartbeat: bool = True,
                 on_lease_lost: Callable[[ZmeshError], Any] | None = None,
                 on_heartbeat_error: Callable[[ZmeshError], Any] | None = None,
                 context: zmq.asyncio.Context | None = None, server_key: str | None = None,
                 key: str | None = None, mesh: str | None = None, known_hosts: str | None = None) -> None:
        timeout = check_timeout("timeout", timeout)  # type: ignore[assignment]
        curve = curve_settings(server_key, key)
        self._lease = LeaseState(agent, capabilities, metadata, ttl)
        self._endpoint = default_endpoint(endpoint)
        #: set when the broker is found by discovery: the client follows it when it moves
        self._finder: Finder | None = None
        self._curve: tuple[tuple[int, Any], ...] = ()
        if self._endpoint is None:
            self._finder = Finder(mesh, curve, known_hosts)  # checked now; the broker is found on connect
        else:
            self._curve = curve.options()
        self.agent = agent
        self._core = ClientCore(timeout=timeout)
        self._ctx = context or zmq.asyncio.Context.instance()
        self._lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()
        self._sock: zmq.asyncio.Socket | None = None
        self._hb_task: asyncio.Task[None] | None = None
        self._heartbeat = check_bool("heartbeat", heartbeat)
        self._on_lease_lost = on_lease_lost
        self._on_hb_error = on_heartbeat_error
        self._subs: list[asyncio.Task[None]] = []
        self._closing = False
        self.info: dict[str, Any] = {}
        self.connected = False
        self._inbox = Inbox()
        self._dispatch_q: asyncio.Queue[Any] | None = None
        self._push_tasks: list[asyncio.Task[None]] = []
        self._arrived = asyncio.Event()  # the buffer grew (receive waits on it)

    @property
    def endpoint(self) -> str:
        return self._endpoint or ""

    @property
    def lease(self) -> int | None:
        return self._lease.lease

    async def connect(self) -> "AsyncClient":
        async with self._connect_lock:
            if self.connected:
                return self
            self._closing = False
            if not self._endpoint:
                await self._discover()
            self.info = await self.hello()
            if self.agent:
                self._lease.registered(await self._call(self._lease.register_call()))
                if self._heartbeat:
                    self._hb_task = asyncio.create_task(self._heartbeat_loop())
            self.connected = True
            return self

    async def __aenter__(self) -> "AsyncClient":
        try:
            return await self.connect()
        except BaseException:
            await self.aclose()
            raise

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self, *, unregister: bool = True) -> None:
        self._closing = True
        for task in [self._hb_task, *self._subs, *self._push_tasks]:
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        self._hb_task = None
        self._subs = []
        self._push_tasks = []
        if unregister and self.connected and self.agent:
            try:
                await self.unregister()
            except ZmeshError as exc:
                log.warning("unregister of %s failed on close: %s", self.agent, exc)
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        self.connected = False

    def _socket(self) -> zmq.asyncio.Socket:
        if self._sock is None:
            self._sock = connect_socket(self._ctx, zmq.DEALER, DEALER_OPTIONS + self._curve, self.endpoint)
            self._core.secure = bool(self._curve)
        return self._sock

    async def _call(self, call: Call[Any]) -> Any:  # type: ignore[override]
        if not self.connected and self.agent and call.op not in NO_CONNECT_OPS:
            await self.connect()  # the agent's own lease, not an implicit one with the broker's TTL
        elif not self._endpoint:
            await self._discover()
        req_id = self._core.new_req_id()
        dialled = self.endpoint
        try:
            return await self._exchange(call, req_id)
        except Unreachable:
            if not await self._moved(dialled):
                raise
        return await self._exchange(call, req_id)  # the same request, to where the broker is now

    async def _flow(self, flow: Any) -> Any:  # type: ignore[override]
        """See Client._flow."""
        try:
            call = next(flow)
            while True:
                call = flow.send(await self._call(call))
        except StopIteration as done:
            return done.value

    async def _moved(self, dialled: str) -> bool:
        """See Client._moved."""
        if self._finder is None or self._closing:
            return False
        async with self._lock:
            old = self.endpoint
            if old != dialled:
                return True  # another task followed the broker meanwhile
            try:
                endpoint, curve = await self._find()
            except Unreachable as exc:
                log.info("broker at %s silent and no broker of mesh '%s' answered discovery: %s", old,
                         self._finder.mesh, exc.message)
                return False
            if endpoint == old:
                return False
            if self._sock is not None:
                self._sock.close(linger=0)
                self._sock = None
            self._endpoint, self._curve = endpoint, curve
            self._socket()
            log.info("broker of mesh '%s' moved from %s to %s (broker %s); following it", self._finder.mesh, old,
                     endpoint, self._finder.broker.broker_id if self._finder.broker else "?")
        if self._push_tasks:  # the push reader waits on the closed socket: a new one reads the new
            self._push_tasks[0].cancel()
            self._push_tasks[0] = asyncio.create_task(self._pump())
        return True

    async def _exchange(self, call: Call[Any], req_id: bytes) -> Any:
        async with self._lock:
            sock = self._socket()
            flow = self._core.exchange(call.op, call.body, self.endpoint, call.wait, req_id)
            try:
                action = next(flow)
                while True:
                    if isinstance(action, Send):
                        try:
                            await sock.send_multipart(action.frames, zmq.NOBLOCK)
                        except zmq.Again:
                            pass
                        action = flow.send(None)
                    else:
                        assert isinstance(action, Recv)
                        got = (await sock.recv_multipart()
                               if await sock.poll(action.timeout * 1000) else None)
                        action = flow.send(got)
            except StopIteration as stop:
                reply = stop.value
            except zmq.ZMQError as exc:
                raise Unreachable(f"socket error talking to {self.endpoint}: {exc} (op {call.op})",
                                  {"endpoint": self.endpoint, "op": call.op}) from None
            finally:
                pushed = self._core.take_pushed()
        if pushed:
            self._route(pushed)
        return self._core.result(call, reply)

    # ------------------------------------------------------------ pushes
    def _start_pushes(self) -> None:
        if self._push_tasks:
            return
        self._dispatch_q = asyncio.Queue()
        self._arrived = asyncio.Event()
        self._push_tasks = [asyncio.create_task(self._pump()), asyncio.create_task(self._dispatch())]

    def _route(self, pushed: list[dict[str, Any]]) -> None:
        for target in self._inbox.route_all(pushed):
            assert self._dispatch_q is not None
            self._dispatch_q.put_nowait(target)
        if self._inbox.buffer:
            self._arrived.set()

    async def _pump(self) -> None:
        """Read pushes while no call is reading."""
        sock = self._socket()
        while not self._closing:
            try:
                async with self._lock:  # first what arrived before the task ran, then each wake-up
                    while int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                        try:
                            self._core.accept(await sock.recv_multipart())
                        except ProtocolError as exc:
                            log.warning("unreadable message from the broker dropped: %s", exc)
                    pushed = self._core.take_pushed()
                self._route(pushed)
                await sock.poll()  # POLLIN
            except zmq.ZMQError as exc:
                log.debug("push read: %s", exc)
                return

    async def _dispatch(self) -> None:
        assert self._dispatch_q is not None
        while True:
            callback, msg = await self._dispatch_q.get()
            try:
                await _maybe_await(callback(msg))
            except Exception:  # a callback bug must not stop the others
                log.exception("message callback failed for %s", msg.id)

    async def _receiving(self, what: str) -> None:
        """See Client._receiving."""
        if not self.agent:
            raise InvalidArgument(f"{what} needs an agent: messages are pushed to an agent's connection",
                                  {"field": "agent"})
        await self.connect()
        self._start_pushes()

    async def _add(self, callback: Callable[[Message], Any], filter: Any, tasks: bool, what: str) -> Receiver:
        await self._receiving(what)
        receiver, backlog = self._inbox.add(callback, filter, tasks)
        assert self._dispatch_q is not None
        for msg in backlog:
            self._dispatch_q.put_nowait((callback, msg))
        return receiver

    async def on_message(self, callback: Callable[[Message], Any], filter: Any = None) -> Receiver:
        """See Client.on_message (``callback`` may be a coroutine function)."""
        return await self._add(callback, filter, False, "on_message")

    async def on_task(self, callback: Callable[[Message], Any], filter: Any = None) -> Receiver:
        """See Client.on_task."""
        return await self._add(callback, filter, True, "on_task")

    async def receive(self, timeout: float | None = None) -> Message | None:
        """See Client.receive."""
        timeout = check_timeout("timeout", timeout, allow_none=True)
        await self._receiving("receive")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            msg = self._inbox.take()
            if msg is not None:
                return msg
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return None
            self._arrived.clear()  # no await since take(): nothing was routed in between
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                return self._inbox.take()

    async def request(self, agent: str, subject: str, body: Any = None, *, timeout: float = 5.0,
                      **options: Any) -> Message:
        """See Client.request."""
        timeout = check_timeout("timeout", timeout)  # type: ignore[assignment]
        await self._receiving("request")
        cid = uuid.uuid4().hex
        got: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        def arrived(msg: Message) -> None:
            if not got.done():
                got.set_result(msg)

        with self._inbox.lock:
            self._inbox.waiters[cid] = arrived
        try:
            sent = await self.send(subject, body, to=agent, type="request", correlation_id=cid, **options)
            try:
                return await asyncio.wait_for(got, timeout)
            except asyncio.TimeoutError:
                raise NoReply(f"no reply from agent '{agent}' within {timeout:g} s (request {sent['id']}, "
                              f"correlation id {cid})", {"agent": agent, "id": sent["id"], "correlation_id": cid}
                              ) from None
        finally:
            with self._inbox.lock:
                self._inbox.waiters.pop(cid, None)

    async def read(self, *, peek: bool = False, **filters: Any) -> list[dict[str, Any]]:
        """See Client.read."""
        filters.setdefault("agent", self._agent(None))
        found = await self.messages(**filters)
        if not peek and found:
            await self.mark_read([m["id"] for m in found], agent=filters["agent"])
        return found  # type: ignore[no-any-return]

    async def watch_task(self, task: str, callback: Callable[[Message], Any]) -> Receiver:
        """See Client.watch_task."""
        receiver = await self.on_message(callback, {"group": f"task:{task}"})
        await self.join(f"task:{task}")
        return receiver

    async def _find(self) -> tuple[str, tuple[tuple[int, Any], ...]]:
        finder = self._finder
        assert finder is not None
        return await asyncio.get_running_loop().run_in_executor(None, finder.find, self._core.timeout)

    async def _discover(self) -> None:
        self._endpoint, self._curve = await self._find()

    async def keepalive(self) -> None:
        """Renew this client's own lease now, as the heartbeat task does: for a client made
        with ``heartbeat=False`` whose owner renews it (the HTTP gateway renews an agent's
        lease on each of its requests). A lapsed lease is registered again and
        ``on_lease_lost`` is told; its claims are gone. Raises what the broker answered."""
        if not self.connected:
            await self.connect()
            return
        try:
            await self._call(self._lease.heartbeat_call())
        except LeaseExpired as exc:
            self._lease.lost += 1
            log.warning("lease of %s lapsed; its claims were released; registering again", self.agent)
            if self._on_lease_lost:
                await _maybe_await(self._on_lease_lost(exc))
            self._lease.registered(await self._call(self._lease.register_call()))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._lease.interval)
            try:
                await self.keepalive()
            except ZmeshError as exc:
                log.warning("heartbeat of %s failed: %s", self.agent, exc)
                if self._on_hb_error:
                    await _maybe_await(self._on_hb_error(exc))

    async def events(self, topics: Iterable[str] = (), *, since: int | None = None,
                     timeout: float | None = None, idle_check: float = 1.0,
                     reconnect: bool = True, on_connection: Callable[[bool], None] | None = None
                     ) -> AsyncIterator[Event]:
        """See Client.events."""
        check_flow_args(topics, since, timeout, idle_check, reconnect, on_connection)
        self.info = await self.hello()  # where "now" is, and the PUB endpoint
        flow = new_flow(topics, since, timeout, idle_check, reconnect, self.info["seq"], on_connection)
        dialled = self.endpoint
        sub = connect_socket(self._ctx, zmq.SUB, SUB_OPTIONS + self._curve, resolve_pub(dialled, self.info["pub"]))
        try:
            answer: Any = None
            error: ZmeshError | None = None
            while not self._closing:
                try:
                    action = flow.throw(error) if error is not None else flow.send(answer)
                except StopIteration:
                    return
                answer, error = None, None
                if isinstance(action, Poll):
                    answer = (await sub.recv_multipart()
                              if await sub.poll(action.timeout * 1000) else None)
                elif isinstance(action, Deliver):
                    yield action.event
                elif isinstance(action, Sleep):
                    await asyncio.sleep(action.seconds)
                else:
                    try:
                        answer = await self._call(action)
                    except ZmeshError as exc:
                        error = exc
                    if self.endpoint != dialled:  # the client followed its broker: so does the SUB
                        moved = await self._resubscribe()
                        if moved is not None:
                            sub.close(linger=0)
                            sub, dialled = moved
        except zmq.ZMQError as exc:
            raise Unreachable(f"event socket error: {exc}", {"endpoint": self.endpoint}) from None
        finally:
            sub.close(linger=0)

    async def _resubscribe(self) -> tuple[zmq.asyncio.Socket, str] | None:
        """See Client._resubscribe."""
        try:
            self.info = await self.hello()
        except ZmeshError as exc:
            log.info("event stream: the broker at %s did not answer hello yet (%s)", self.endpoint, exc.message)
            return None
        dialled = self.endpoint  # where the hello was answered
        pub = resolve_pub(dialled, self.info["pub"])
        log.info("event stream follows the broker to %s", pub)
        return connect_socket(self._ctx, zmq.SUB, SUB_OPTIONS + self._curve, pub), dialled

    def subscribe(self, callback: Callable[[Event], Any], topics: Iterable[str] = (), *,
                  since: int | None = None) -> "asyncio.Task[None]":
        """Run ``callback(event)`` (sync or async) for each event in a task until aclose().
        The subscription outlives broker restarts: it resumes after the last delivered seq."""
        check_callback(callback)
        check_flow_args(topics, since, None, 1.0)  # raise bad arguments here, not in the task

        last = [since]

        def deliver(event: Event) -> Any:
            last[0] = event.seq  # resume after it even if the callback fails
            return callback(event)
        return self._resuming(lambda: self.events(topics, since=last[0]), deliver, "event", "event subscription")

    def _resuming(self, stream: Callable[[], AsyncIterator[Any]], deliver: Callable[[Any], Any], item: str,
                  what: str) -> "asyncio.Task[None]":
        """See Client._resuming (``deliver`` may return an awaitable)."""
        async def run() -> None:
            while not self._closing:
                try:
                    async for got in stream():
                        try:
                            await _maybe_await(deliver(got))
                        except Exception:
                            log.exception("%s callback failed", item)
                except Unreachable as exc:
                    log.warning("%s interrupted (%s); resuming", what, exc)
                    await asyncio.sleep(1.0)

        task = asyncio.create_task(run())
        self._subs.append(task)
        return task

    # ------------------------------------------------------------ coordinator
    async def watch(self, *, timeout: float | None = None, idle_check: float = 1.0,
                    on_connection: Callable[[bool], None] | None = None,
                    initial: bool = False) -> AsyncIterator[tuple[Roster, Event | None]]:
        """See Client.watch."""
        check_flow_args((), None, timeout, idle_check, True, on_connection)
        check_bool("initial", initial)
        while not self._closing:
            roster = Roster(await self._snapshot_retrying(on_connection))
            if initial:
                yield roster, None
            try:
                async for event in self.events(since=roster.seq, timeout=timeout, idle_check=idle_check,
                                               on_connection=on_connection):
                    if roster.apply(event):
                        yield roster, event
                return
            except SnapshotRequired:
                log.warning("watch: events after seq %s were trimmed from the broker's log; "
                            "taking a new snapshot", roster.seq)

    async def _snapshot_retrying(self, on_connection: Callable[[bool], None] | None = None) -> dict[str, Any]:
        wait, down = 0.5, False
        while True:
            try:
                snap = await self.snapshot()
                if down and on_connection is not None:
                    on_connection(True)
                return snap
            except Unreachable as exc:
                if self._closing:
                    raise
                if not down and on_connection is not None:
                    on_connection(False)
                down = True
                log.warning("watch: broker unreachable (%s); retrying in %g s", exc.message, wait)
                await asyncio.sleep(wait)
                wait = min(5.0, wait * 2)

    def follow(self, callback: Callable[[Roster, Event], Any]) -> "asyncio.Task[None]":
        """Run ``callback(roster, event)`` (sync or async) for every event after a snapshot
        in a task until aclose(); it recovers by itself from broker restarts."""
        check_callback(callback)

        return self._resuming(self.watch, lambda pair: callback(*pair), "watch", "watch")


async def _maybe_await(value: Awaitable[Any] | Any) -> Any:
    if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
        return await value
    return value
