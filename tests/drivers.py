"""Both client drivers behind one interface: the async one through a thin blocking
adapter, so a behaviour is tested once and run against both (``make_client`` fixture)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Iterator

from zmesh import AsyncClient
from zmesh.protocol import Event


class Blocking:
    """Runs an AsyncClient on a private event loop thread behind the Client interface."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._client = self._run(self._make(*args, **kw))

    async def _make(self, *args: Any, **kw: Any) -> AsyncClient:
        return AsyncClient(*args, **kw)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        async def invoke(*args: Any, **kw: Any) -> Any:  # on the loop: create_task works
            result = attr(*args, **kw)
            return await result if asyncio.iscoroutine(result) else result

        return lambda *args, **kw: self._run(invoke(*args, **kw))

    def _iterate(self, agen: Any) -> Iterator[Any]:
        """An async generator of the client, iterated from this thread."""
        try:
            while True:
                try:
                    yield self._run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(agen.aclose())

    def events(self, *args: Any, **kw: Any) -> Iterator[Event]:
        return self._iterate(self._client.events(*args, **kw))

    def watch(self, *args: Any, **kw: Any) -> Iterator[Any]:
        return self._iterate(self._client.watch(*args, **kw))

    def __enter__(self) -> "Blocking":
        self._run(self._client.connect())
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self, **kw: Any) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.aclose(**kw))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
