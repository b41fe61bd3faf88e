"""What a lock and a semaphore share once they hold: give back, ask the broker, ``with``.

Rules it keeps: each method runs the SlotSet's one flow (_slots.py) with the class's driver
(``run`` for a Client, ``arun`` for an AsyncClient); nothing here decides anything.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, TypeVar

from ._drive import Site, arun, run
from ._slots import SlotSet

H = TypeVar("H", bound="Held")
A = TypeVar("A", bound="AsyncHeld")


class Held:
    """For a Client: ``release``, ``check`` and the context manager."""

    client: Any
    _site: Site
    _slots: SlotSet

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        raise NotImplementedError

    def release(self) -> bool:
        """Give it back: True if released, False if not held or its claim had ended."""
        return run(self.client, self._site, self._slots.release_flow())

    def check(self) -> bool:
        """Ask the broker whether this object's claim is still the current one."""
        return run(self.client, self._site, self._slots.check_flow())

    def __enter__(self: H) -> H:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        run(self.client, self._site, self._slots.exit_flow(exc))


class AsyncHeld:
    """For an AsyncClient: the same methods, awaited; ``async with``."""

    client: Any
    _site: Site
    _slots: SlotSet

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        raise NotImplementedError

    async def release(self) -> bool:
        return await arun(self.client, self._site, self._slots.release_flow())

    async def check(self) -> bool:
        return await arun(self.client, self._site, self._slots.check_flow())

    async def __aenter__(self: A) -> A:
        await self.acquire()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await arun(self.client, self._site, self._slots.exit_flow(exc))
