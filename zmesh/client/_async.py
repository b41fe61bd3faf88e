"""``AsyncClient``: the asyncio driver. Same names as Client; every call is awaited
(``async with``, ``await c.claim(...)``, ``async for ev in c.events()``). Every op and flow
is defined once (_api.py and the modules it includes); this module only does their I/O: one
DEALER guarded by an asyncio lock, the heartbeat and subscriptions as tasks, SUB sockets
owned by the stream that iterates them; for an agent, a task that reads pushes while no
call is reading and another that runs message callbacks (coroutine callbacks awaited).

Rules: the same as Client's (implicit connect registers the agent with its own lease and
starts the heartbeat; ``zmq.ZMQError`` never leaves this module; ``aclose()`` ends every
wait of a flow at once and every stream at its next step). With no endpoint the broker is
discovered on connect (or the first call), in an executor, and followed when it moves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import zmq
import zmq.asyncio

from ..errors import ProtocolError, Unreachable, ZmeshError
from ..protocol.records import Hello
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

log = logging.getLogger("zmesh.client")

T = TypeVar("T")

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11


class AsyncClient(LiveApi):
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
        self._core.follows = self._finder is not None
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
        self._closed = asyncio.Event()  # set by aclose: a Sleep ends at once
        self.info: Hello = cast(Hello, {})
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

    def _is_closing(self) -> bool:
        return self._closing

    # ------------------------------------------------------------ lifecycle
    async def connect(self) -> Self:
        """See Client.connect."""
        async with self._connect_lock:
            if self.connected:
                return self
            self._closing = False
            self._closed.clear()
            if not self._endpoint:
                await self._discover()
            await self._flow(self._lease.connect_flow(self))
            if self.agent and self._heartbeat:
                self._hb_task = asyncio.create_task(
                    self._flow(self._lease.heartbeat_flow(self.keepalive, self._on_hb_error)))
            self.connected = True
            return self

    async def __aenter__(self) -> Self:
        try:
            return await self.connect()
        except BaseException:
            await self.aclose()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self, *, unregister: bool = True) -> None:
        """See Client.close."""
        self._closing = True
        self._closed.set()
        for task in [self._hb_task, *self._subs, *self._push_tasks]:
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001,S110 - it is ending either way
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

    # ------------------------------------------------------------ the driver
    def _socket(self) -> zmq.asyncio.Socket:
        if self._sock is None:
            self._sock = connect_socket(self._ctx, zmq.DEALER, DEALER_OPTIONS + self._curve, self.endpoint)
            self._core.secure = bool(self._curve)
        return self._sock

    async def _call(self, call: Call[T]) -> T:  # type: ignore[override]
        """See Client._call."""
        if not self.connected and self.agent and call.op not in NO_CONNECT_OPS:
            await self.connect()  # the agent's own lease, not an implicit one with the broker's TTL
        elif not self._endpoint:
            await self._discover()
        async with self._lock:
            sock = self._socket()
            flow = self._core.exchange(call.op, call.body, self.endpoint, call.wait)
            try:
                action = next(flow)
                while True:
                    try:
                        if isinstance(action, Send):
                            try:
                                await sock.send_multipart(action.frames, zmq.NOBLOCK)
                            except zmq.Again:
                                pass
                            action = flow.send(None)
                        elif isinstance(action, Recv):
                            action = flow.send(await sock.recv_multipart() if await sock.poll(action.timeout * 1000)
                                               else None)
                        else:  # Follow
                            moved = await self._follow(action.dialled)
                            sock = self._socket()
                            action = flow.send(moved)
                    except zmq.ZMQError as exc:
                        action = flow.throw(Unreachable(f"socket error talking to {self.endpoint}: {exc} (op {call.op})",
                                                        {"endpoint": self.endpoint, "op": call.op}))
            except StopIteration as stop:
                reply = stop.value
            finally:
                pushed = self._core.take_pushed()
        if pushed:
            self._route(pushed)
        return self._core.result(call, reply)

    async def _follow(self, dialled: str) -> str | None:
        """See Client._follow (discovery runs in an executor; a new push task reads the new
        socket)."""
        if self._finder is None or self._closing:
            return None
        found = await asyncio.get_running_loop().run_in_executor(None, self._finder.follow, dialled,
                                                                 self._core.timeout)
        if found is None:
            return None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        self._endpoint, self._curve = found
        self._socket()
        if self._push_tasks:  # the push reader waits on the closed socket: a new one reads the new
            self._push_tasks[0].cancel()
            self._push_tasks[0] = asyncio.create_task(self._pump())
        return self.endpoint

    async def _flow(self, flow: Flow[T]) -> T:  # type: ignore[override]
        """See Client._flow."""
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
                    answer = await self._act(action)
                except Exception as exc:  # noqa: BLE001 - thrown into the flow: its to handle, or to raise
                    error = exc
        finally:
            flow.close()

    async def _act(self, action: Any) -> Any:
        if isinstance(action, Call):
            return await self._call(action)
        if isinstance(action, Invoke):
            return await _maybe_await(action.fn(*action.args, **action.kwargs))
        if isinstance(action, Sleep):
            return await self._sleep(action.seconds)
        if isinstance(action, WaitFor):
            return await self._wait_for(action.pending, action.timeout)
        if isinstance(action, AwaitPush):
            return await self._await_push(action.seconds)
        raise TypeError(f"not an action: {action!r}")

    async def _stream(self, flow: Generator[Any, Any, None]) -> AsyncIterator[Any]:  # type: ignore[override]
        """See Client._stream."""
        sub: zmq.asyncio.Socket | None = None
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
                        answer = await sub.recv_multipart() if await sub.poll(action.timeout * 1000) else None
                    elif isinstance(action, Subscribe):
                        if sub is not None:
                            sub.close(linger=0)
                        sub = None
                        if action.endpoint is not None:
                            sub = connect_socket(self._ctx, zmq.SUB, SUB_OPTIONS + self._curve, action.endpoint)
                    else:
                        answer = await self._act(action)
                except zmq.ZMQError as exc:
                    error = Unreachable(f"event socket error: {exc}", {"endpoint": self.endpoint})
                except Exception as exc:  # noqa: BLE001 - thrown into the flow
                    error = exc
        finally:
            flow.close()
            if sub is not None:
                sub.close(linger=0)

    def _background(self, flow: Generator[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A task running a subscription (its callbacks are Invoked) until aclose()."""
        async def run() -> None:
            async for _ in self._stream(flow):
                pass
        task = asyncio.create_task(run(), name=name)
        self._subs.append(task)
        return task

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, or less when the client closes: True when it did."""
        if not self._closing:
            try:
                await asyncio.wait_for(self._closed.wait(), seconds)
            except asyncio.TimeoutError:
                pass
        return self._closing

    async def _wait_for(self, pending: Pending, timeout: float) -> Message | None:
        if pending.message is None:
            got: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            pending.wake = lambda: None if got.done() else got.set_result(None)
            try:
                await asyncio.wait_for(got, timeout)
            except asyncio.TimeoutError:
                pass
        return pending.message

    async def _find(self) -> tuple[str, tuple[tuple[int, Any], ...]]:
        finder = self._finder
        assert finder is not None
        return await asyncio.get_running_loop().run_in_executor(None, finder.find, self._core.timeout)

    async def _discover(self) -> None:
        self._endpoint, self._curve = await self._find()

    # ------------------------------------------------------------ pushes
    async def _receiving(self, what: str, pump: bool = True) -> None:
        """See Client._receiving (pushes are always read by a task here: ``pump`` is moot)."""
        check_receiver(self.agent, what)
        await self.connect()
        self._start_pushes()

    def _start_pushes(self) -> None:
        if self._push_tasks:
            return
        self._dispatch_q = asyncio.Queue()
        self._arrived = asyncio.Event()
        self._push_tasks = [asyncio.create_task(self._pump()), asyncio.create_task(self._dispatch())]

    def _route(self, pushed: list[dict[str, Any]]) -> None:
        self._dispatch_all(self._inbox.route_all(pushed))
        if self._inbox.buffer:
            self._arrived.set()

    def _dispatch_all(self, targets: list[tuple[Callable[[Message], Any], Message]]) -> None:
        for target in targets:  # a receiver exists only once the push tasks run
            assert self._dispatch_q is not None
            self._dispatch_q.put_nowait(target)

    async def _await_push(self, left: float | None) -> bool:
        """receive()'s wait: until the buffer grows, at most ``left`` seconds."""
        self._arrived.clear()  # no await since the flow's take(): nothing was routed in between
        try:
            await asyncio.wait_for(self._arrived.wait(), left)
        except asyncio.TimeoutError:
            pass
        return True

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


async def _maybe_await(value: Awaitable[Any] | Any) -> Any:
    if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
        return await value
    return value
