"""``Election``: one leader among agents (the coordinator role), and observers that learn who
leads and hear when that changes (kazoo's ``Election``, plus a watch).

Rules it keeps:

* The election ``name`` is the task ``election:<name>`` (type ``zmesh.election``). The
  leader is the agent holding its claim, and :attr:`Election.token` is its fencing token.
  It is the lock's machinery (``_slots``), so at most one agent holds the claim at any
  moment, and each new leader has a larger token than every leader before it.
* A candidate campaigns (``campaign()``: wait until elected; ``run(func)``: campaign, run,
  resign) and resigns with ``resign()``. The candidates waiting are woken by the
  ``task.released`` event of the leadership, never by polling in a loop.
* An observer needs no agent: ``leader()`` reads who leads now, and ``watch(callback)``
  calls ``callback(Holder | None)`` with the current leader and then on every change, in
  order. Changes are ordered by fencing token, so a late or replayed event never brings
  back an earlier leader. ``changes()`` is the same as an iterator. Callbacks run on the
  client's event thread (Client) or in its event loop (AsyncClient): keep them short.
* ``is_leader`` is what the candidate's events have shown (see below); ``check()`` asks the
  broker.

What a lost lease means:

* The leader dies or stops heartbeating: after its lease TTL the broker releases the
  leadership (``task.released``, reason ``lease_expired``). The first candidate to claim it
  leads, with a larger token. Observers hear ``None`` and then the new leader.
* A network partition: the majority side elects a new leader after the TTL. The cut-off
  leader hears nothing and may still believe it leads: ``is_leader`` stays True until its
  events resume. Anything a leader does to shared state must carry its token, so that
  state can refuse an older leader's writes. This is the only protection that holds in
  every case.
* The candidate's lease lapsed and its client registered again: ``is_leader`` is False,
  ``resign()`` returns False, and ``campaign()`` may win again with a new token.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import time
from typing import Any, AsyncIterator, Callable, Iterator

from zmesh import AsyncClient, Client, NotFound

from ._drive import Site, arun, async_site, run, sync_site
from ._flow import (FALLBACK_POLL_S, Flow, agent_of, call, check_bool, check_callable, check_client,
                    check_name, check_seconds, check_timeout, watch)
from ._slots import SlotSet, ensure_task, recipe_task
from ._watch import Board, ClaimTracker, Holder, Interest

PREFIX = "election:"
TYPE = "zmesh.election"


class Watching:
    """An observer's watch of an election: ``leader`` is the latest leader it heard of;
    ``cancel()`` ends the callbacks."""

    def __init__(self, board: Board, interest: Interest, tracker: ClaimTracker) -> None:
        self._board = board
        self._interest = interest
        self._tracker = tracker

    @property
    def leader(self) -> Holder | None:
        return self._tracker.current

    def cancel(self) -> None:
        self._board.remove(self._interest)
        self._tracker.on_change = None


class _ElectionCore:
    def __init__(self, client: Any, name: str, poll: float, site: Site) -> None:
        self.client = client
        self.name = check_name(name, prefix=PREFIX)
        self.task_id = PREFIX + name
        self.poll = check_seconds("poll", poll)
        #: the candidate's agent (None: an observer only)
        self.agent: str | None = getattr(client, "agent", None) or None
        self._site = site
        self._data = {"recipe": "election", "name": name}
        self._slots: SlotSet | None = None
        self._ready = False

    @property
    def token(self) -> int | None:
        """The fencing token of this candidate's leadership (None: not leading)."""
        return None if self._slots is None else self._slots.token

    @property
    def is_leader(self) -> bool:
        """Leading, as far as this candidate's events have shown (module notes)."""
        return self._slots is not None and self._slots.is_acquired

    def _candidate(self) -> SlotSet:
        if self._slots is None:
            agent = agent_of(self.client, "campaigning in an Election")
            self._slots = SlotSet(self._site, agent, [self.task_id], poll=self.poll,
                                  make=lambda _id: recipe_task(TYPE, self._data))
        return self._slots

    def _campaign(self, blocking: Any, timeout: Any) -> Flow[bool]:
        check_bool("blocking", blocking)
        seconds = check_timeout("timeout", timeout)
        return self._campaign_flow(self._candidate(), blocking, seconds)

    def _campaign_flow(self, slots: SlotSet, blocking: bool, timeout: float | None) -> Flow[bool]:
        if not self._ready:
            yield from ensure_task(self.task_id, TYPE, self._data)
            self._ready = True
        return (yield from slots.acquire_flow(blocking, timeout, time.monotonic))

    def _resign(self) -> Flow[bool]:
        if self._slots is None:
            return False
        return (yield from self._slots.release_flow())

    def _check(self) -> Flow[bool]:
        if self._slots is None:
            return False
        return (yield from self._slots.check_flow())

    def _leader_flow(self) -> Flow[Holder | None]:
        try:
            record = yield call("task", self.task_id)
        except NotFound:
            return None
        if record.get("status") != "claimed" or not record.get("owner"):
            return None
        return Holder(record["owner"], record["token"])

    def _watch(self, callback: Any) -> Flow[Watching]:
        check_callable("callback", callback)
        return self._watch_flow(callback)

    def _watch_flow(self, callback: Callable[[Holder | None], Any]) -> Flow[Watching]:
        board = yield from watch()
        tracker = ClaimTracker(self.task_id, on_change=callback)
        interest = board.interest(ids=[self.task_id], on_event=tracker.apply)  # before the read: nothing missed
        try:
            record = yield call("task", self.task_id)
        except NotFound:
            record = None
        except BaseException:
            board.remove(interest)
            raise
        tracker.seed(record)
        tracker.announce()  # the current leader first, if no event told it already
        return Watching(board, interest, tracker)

    def __repr__(self) -> str:
        state = f"leading token={self.token}" if self.is_leader else "not leading"
        return f"<{type(self).__name__} {self.name!r} agent={self.agent!r} {state}>"


class Election(_ElectionCore):
    """Leader election on ``name`` (see the module docstring). A client without an agent
    may observe (``leader``, ``watch``, ``changes``) but not campaign."""

    def __init__(self, client: Client, name: str, *, poll: float = FALLBACK_POLL_S) -> None:
        check_client(client, Client, "Election")
        super().__init__(client, name, poll, sync_site(client))

    def campaign(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Become the leader: True once leading (at once if leading already)."""
        return run(self.client, self._site, self._campaign(blocking, timeout))

    def resign(self) -> bool:
        """Step down: True if this ended the leadership, False if not leading (any more)."""
        return run(self.client, self._site, self._resign())

    def run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Campaign until elected, call ``func(*args, **kwargs)`` as the leader, then resign
        (also when it raises). Returns what ``func`` returned."""
        check_callable("func", func)
        self.campaign()
        try:
            return func(*args, **kwargs)
        finally:
            self.resign()

    def check(self) -> bool:
        """Ask the broker whether this candidate's leadership is still current."""
        return run(self.client, self._site, self._check())

    def leader(self) -> Holder | None:
        """Who leads now, by the broker (None: nobody)."""
        return run(self.client, self._site, self._leader_flow())

    def watch(self, callback: Callable[[Holder | None], Any]) -> Watching:
        """Call ``callback(leader)`` now and on every change of leader (module rules)."""
        return run(self.client, self._site, self._watch(callback))

    def changes(self, timeout: float | None = None) -> Iterator[Holder | None]:
        """The current leader, then each change of leader, as they happen; ends after
        ``timeout`` seconds without a change (None: never)."""
        seconds = check_timeout("timeout", timeout)
        got: queue.SimpleQueue[Holder | None] = queue.SimpleQueue()
        watching = self.watch(got.put)
        try:
            while True:
                try:
                    yield got.get(timeout=seconds)
                except queue.Empty:
                    return
        finally:
            watching.cancel()


class AsyncElection(_ElectionCore):
    """:class:`Election` for an AsyncClient (``run`` awaits ``func`` when it is async)."""

    def __init__(self, client: AsyncClient, name: str, *, poll: float = FALLBACK_POLL_S) -> None:
        check_client(client, AsyncClient, "AsyncElection")
        super().__init__(client, name, poll, async_site(client))

    async def campaign(self, blocking: bool = True, timeout: float | None = None) -> bool:
        return await arun(self.client, self._site, self._campaign(blocking, timeout))

    async def resign(self) -> bool:
        return await arun(self.client, self._site, self._resign())

    async def run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        check_callable("func", func)
        await self.campaign()
        try:
            got = func(*args, **kwargs)
            return await got if inspect.isawaitable(got) else got
        finally:
            await self.resign()

    async def check(self) -> bool:
        return await arun(self.client, self._site, self._check())

    async def leader(self) -> Holder | None:
        return await arun(self.client, self._site, self._leader_flow())

    async def watch(self, callback: Callable[[Holder | None], Any]) -> Watching:
        return await arun(self.client, self._site, self._watch(callback))

    async def changes(self, timeout: float | None = None) -> AsyncIterator[Holder | None]:
        seconds = check_timeout("timeout", timeout)
        got: asyncio.Queue[Holder | None] = asyncio.Queue()
        watching = await self.watch(got.put_nowait)
        try:
            while True:
                try:
                    yield await asyncio.wait_for(got.get(), seconds)
                except asyncio.TimeoutError:
                    return
        finally:
            watching.cancel()
