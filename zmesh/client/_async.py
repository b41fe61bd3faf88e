"""``AsyncClient``: the asyncio driver of ClientCore. Same names as Client; every call is
awaited (``async with``, ``await c.claim(...)``, ``async for ev in c.events()``)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

import zmq
import zmq.asyncio

from ..errors import LeaseExpired, Unreachable, ZmeshError
from ..protocol import Event
from ._protocol import (DEALER_OPTIONS, SUB_OPTIONS, Api, Call, ClientCore, Deliver, EventTracker, LeaseState,
                        Poll, Recv, Send, configure, default_endpoint, event_flow, resolve_pub)

log = logging.getLogger("zmesh.client")


class AsyncClient(Api):
    """The asyncio twin of :class:`zmesh.Client` (see it for the arguments)."""

    def __init__(self, endpoint: str | None = None, *, agent: str | None = None,
                 capabilities: Iterable[str] = (), metadata: dict[str, Any] | None = None,
                 ttl: float | None = None, timeout: float = 5.0, heartbeat: bool = True,
                 on_lease_lost: Callable[[ZmeshError], Any] | None = None,
                 on_heartbeat_error: Callable[[ZmeshError], Any] | None = None,
                 context: zmq.asyncio.Context | None = None) -> None:
        self._endpoint = default_endpoint(endpoint)
        self.agent = agent
        self._core = ClientCore(timeout=timeout)
        self._lease = LeaseState(agent, capabilities, metadata, ttl)
        self._ctx = context or zmq.asyncio.Context.instance()
        self._lock = asyncio.Lock()
        self._sock: zmq.asyncio.Socket | None = None
        self._hb_task: asyncio.Task[None] | None = None
        self._heartbeat = heartbeat
        self._on_lease_lost = on_lease_lost
        self._on_hb_error = on_heartbeat_error
        self._subs: list[asyncio.Task[None]] = []
        self._closing = False
        self.info: dict[str, Any] = {}
        self.connected = False

    @property
    def endpoint(self) -> str:
        return self._endpoint or ""

    @property
    def lease(self) -> int | None:
        return self._lease.lease

    async def connect(self) -> "AsyncClient":
        if self.connected:
            return self
        if not self._endpoint:
            from ..discovery import discover

            info = await asyncio.get_running_loop().run_in_executor(
                None, lambda: discover(timeout=min(self._core.timeout, 3.0)))
            self._endpoint = info.endpoint
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
        for task in [self._hb_task, *self._subs]:
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        self._hb_task = None
        self._subs = []
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
            sock = configure(self._ctx.socket(zmq.DEALER), DEALER_OPTIONS)
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    async def _call(self, call: Call[Any]) -> Any:  # type: ignore[override]
        async with self._lock:
            sock = self._socket()
            flow = self._core.exchange(call.op, call.body, self.endpoint)
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
        return self._core.result(call, reply)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._lease.interval)
            try:
                await self._call(self._lease.heartbeat_call())
            except LeaseExpired as exc:
                self._lease.lost += 1
                log.warning("lease of %s lapsed; its claims were released; registering again", self.agent)
                if self._on_lease_lost:
                    await _maybe_await(self._on_lease_lost(exc))
                try:
                    self._lease.registered(await self._call(self._lease.register_call()))
                except ZmeshError as again:
                    log.warning("re-register of %s failed: %s", self.agent, again)
            except ZmeshError as exc:
                log.warning("heartbeat of %s failed: %s", self.agent, exc)
                if self._on_hb_error:
                    await _maybe_await(self._on_hb_error(exc))

    async def events(self, topics: Iterable[str] = (), *, since: int | None = None,
                     timeout: float | None = None, idle_check: float = 1.0) -> AsyncIterator[Event]:
        """See Client.events."""
        if not self.info:
            self.info = await self.hello()
        flow = event_flow(EventTracker(topics, since), replay_first=since is not None,
                          timeout=timeout, idle_check=idle_check)
        sub = configure(self._ctx.socket(zmq.SUB), SUB_OPTIONS)
        sub.connect(resolve_pub(self.endpoint, self.info["pub"]))
        try:
            answer: Any = None
            while not self._closing:
                try:
                    action = flow.send(answer)
                except StopIteration:
                    return
                if isinstance(action, Poll):
                    answer = (await sub.recv_multipart()
                              if await sub.poll(action.timeout * 1000) else None)
                elif isinstance(action, Deliver):
                    answer = None
                    yield action.event
                else:
                    answer = await self._call(action)
        finally:
            sub.close(linger=0)

    def subscribe(self, callback: Callable[[Event], Any], topics: Iterable[str] = (), *,
                  since: int | None = None) -> "asyncio.Task[None]":
        """Run ``callback(event)`` (sync or async) for each event in a task until aclose().
        The subscription outlives broker restarts: it resumes after the last delivered seq."""
        async def run() -> None:
            last = since
            while not self._closing:
                try:
                    async for event in self.events(topics, since=last):
                        last = event.seq
                        try:
                            await _maybe_await(callback(event))
                        except Exception:
                            log.exception("event callback failed")
                except Unreachable as exc:
                    log.warning("event subscription interrupted (%s); resuming", exc)

        task = asyncio.create_task(run())
        self._subs.append(task)
        return task


async def _maybe_await(value: Awaitable[Any] | Any) -> Any:
    if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
        return await value
    return value
