"""``Barrier``: wait until N parties have arrived, then all go on (kazoo's ``DoubleBarrier``:
``enter()`` until N are in, ``leave()`` until all are out), on N task claims and a gate.

Rules it keeps:

* The barrier ``name`` is the gate task ``barrier:<name>`` (type ``zmesh.barrier``, its
  data holds ``parties``) and N place tasks ``barrier:<name>#1`` .. ``#N``. A party that
  arrives claims a free place (the semaphore's machinery, ``_slots``), and the fencing token
  of its place is :attr:`Barrier.token`. N is fixed by the first creator, as for a semaphore.
* The barrier opens when one party sees all N places claimed at once (one read of the
  claimed tasks). That party claims the gate and completes it, and a completed gate stays
  open. Claiming the gate lets one opener win; a party that is opening and dies leaves
  the gate claimed, and its lease's end frees the gate for the next one. Every party waits
  for the events of the places and of the gate: no polling in a loop.
* The barrier is single-use. Once open it stays open, and a party arriving later passes at
  once, whether or not a place is free. For a barrier per round, use a name per round
  (``f"step-{n}"``).
* ``leave()`` gives the place back and waits until no place is claimed. ``wait()`` enters
  and gives the place back at once: "wait until N arrived". ``with barrier:`` enters, and
  leaves at the end; after an exception it only gives its place back.
* A party that gives up (a timeout, a cancellation) gives its place back: it has not
  arrived.

What a lost lease means for a party:

* Before the barrier opens: its place is released after its lease TTL. It no longer counts,
  and the barrier waits for N live parties: another agent may take the place, or the same
  one after it registered again. Nobody passes on behalf of a dead party.
* After the barrier opened: nothing for the others. The gate stays open, and for
  ``leave()`` a dead party has left (its place is free).
* A network partition before the barrier opens: the cut-off party still waits (it hears
  no events), and its place counts until its TTL runs out. If the N are complete before
  that, the barrier opens with it counted. Once its place is released the barrier waits
  for N live parties.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from zmesh import AsyncClient, Client, Conflict, InvalidArgument

from ._drive import Site, arun, async_site, run, sync_site
from ._flow import (FALLBACK_POLL_S, Checkpoint, Deadline, Flow, Wait, agent_of, call, check_client, check_count,
                    check_name, check_seconds, check_timeout, watch)
from ._slots import SlotSet, ensure_task, holders_of, recipe_task
from ._watch import Holder

PREFIX = "barrier:"
TYPE = "zmesh.barrier"
PLACE_TYPE = "zmesh.barrier.place"
MAX_PARTIES = 1000


class _BarrierCore:
    def __init__(self, client: Any, name: str, parties: Any, poll: float, site: Site) -> None:
        self.parties = check_count("parties", parties, MAX_PARTIES)
        self.name = check_name(name, prefix=PREFIX, suffix=f"#{parties}")
        self.client = client
        self.agent = agent_of(client, "a Barrier")
        self.poll = check_seconds("poll", poll)
        self.task_id = PREFIX + name
        self._prefix = f"{self.task_id}#"
        self.place_ids = [f"{self._prefix}{i}" for i in range(1, parties + 1)]
        self._site = site
        self._slots = SlotSet(site, self.agent, self.place_ids, poll=self.poll, make=self._place_task)
        self._ready = False

    def _place_task(self, place_id: str) -> dict[str, Any]:
        return recipe_task(PLACE_TYPE, {"recipe": "barrier", "name": self.name,
                                        "place": int(place_id[len(self._prefix):])})

    @property
    def token(self) -> int | None:
        """The fencing token of the place held (None: none)."""
        return self._slots.token

    @property
    def place(self) -> str | None:
        """The task id of the place held (None: none)."""
        return self._slots.task_id

    # ------------------------------------------------------------ flows
    def _define(self) -> Flow[dict[str, Any]]:
        record = yield from ensure_task(self.task_id, TYPE, {"recipe": "barrier", "name": self.name,
                                                              "parties": self.parties})
        if not self._ready:
            fixed = (record.get("data") or {}).get("parties")
            if fixed != self.parties:
                raise InvalidArgument(f"barrier '{self.name}' was created with parties={fixed}, not {self.parties}: "
                                      "the first creator fixes it",
                                      {"field": "parties", "parties": fixed, "given": self.parties})
            self._ready = True
        return record

    def _open_now(self) -> Flow[bool]:
        """Open the gate (all N places are claimed): True when it is open, False while
        another party is opening it (its completion, or its lease's end, wakes us)."""
        try:
            got = yield call("claim", self.task_id)
        except Conflict as exc:
            if exc.details.get("status") == "completed":
                return True
            raise
        if got is None:
            return False
        yield call("complete", self.task_id, token=got.token,
                   result={"opened_by": self.agent, "parties": self.parties})
        return True

    def _enter(self, timeout: Any) -> Flow[bool]:
        return self._enter_flow(check_timeout("timeout", timeout))

    def _enter_flow(self, timeout: float | None) -> Flow[bool]:
        gate: dict[str, Any] | None = yield from self._define()
        board = yield from watch()
        waiting = board.interest(ids=[*self.place_ids, self.task_id])
        deadline = Deadline(time.monotonic, timeout)
        slots = self._slots
        try:
            while True:
                waiting.reset()
                if gate is None:
                    gate = yield call("task", self.task_id)
                if gate["status"] == "completed":
                    yield Checkpoint()
                    return True
                gate = None
                if not slots.is_acquired:
                    slots.forget()  # none, or one whose claim ended (a lapsed lease): take one
                    yield from slots.try_flow(board, self.place_ids)
                held = yield from holders_of(self.place_ids, self._prefix)
                if len(held) >= self.parties and (yield from self._open_now()):
                    yield Checkpoint()
                    return True
                if deadline.passed():
                    yield from slots.release_flow()  # gave up: it has not arrived
                    return False
                yield Wait(waiting, deadline.step(self.poll))
        except BaseException:
            if slots.claim is not None:
                yield from slots.give_back()
            raise
        finally:
            board.remove(waiting)

    def _leave(self, timeout: Any) -> Flow[bool]:
        return self._leave_flow(check_timeout("timeout", timeout))

    def _leave_flow(self, timeout: float | None) -> Flow[bool]:
        yield from self._slots.release_flow()
        board = yield from watch()
        waiting = board.interest(ids=self.place_ids)
        deadline = Deadline(time.monotonic, timeout)
        try:
            while True:
                waiting.reset()
                held = yield from holders_of(self.place_ids, self._prefix)
                if not held:
                    return True
                if deadline.passed():
                    return False
                yield Wait(waiting, deadline.step(self.poll))
        finally:
            board.remove(waiting)

    def _wait(self, timeout: Any) -> Flow[bool]:
        return self._wait_flow(check_timeout("timeout", timeout))

    def _wait_flow(self, timeout: float | None) -> Flow[bool]:
        entered = yield from self._enter_flow(timeout)
        if entered:
            yield from self._slots.release_flow()
        return entered

    def _exit(self, exc: BaseException | None) -> Flow[bool]:
        """The end of a ``with`` block: leave (waiting for the others); after an exception
        only give the place back, without waiting."""
        if exc is None:
            return (yield from self._leave_flow(None))
        yield from self._slots.exit_flow(exc)
        return False

    def _is_open(self) -> Flow[bool]:
        record = yield from self._define()
        return record["status"] == "completed"

    def _arrived(self) -> Flow[list[Holder]]:
        yield from self._define()
        held = yield from holders_of(self.place_ids, self._prefix)
        return sorted(held.values(), key=lambda h: h.token)

    def __repr__(self) -> str:
        state = f"{self.place} token={self.token}" if self.token is not None else "no place"
        return f"<{type(self).__name__} {self.name!r} parties={self.parties} agent={self.agent!r} {state}>"


class Barrier(_BarrierCore):
    """A single-use barrier of ``parties`` agents (see the module docstring).
    ``with Barrier(client, "load-done", parties=3): ...`` enters, and leaves at the end."""

    def __init__(self, client: Client, name: str, parties: int, *, poll: float = FALLBACK_POLL_S) -> None:
        check_client(client, Client, "Barrier")
        super().__init__(client, name, parties, poll, sync_site(client))

    def enter(self, timeout: float | None = None) -> bool:
        """Arrive and wait until the barrier opens: True when open, False on timeout (the
        place is given back then)."""
        return run(self.client, self._site, self._enter(timeout))

    def leave(self, timeout: float | None = None) -> bool:
        """Give the place back and wait until every party has: True when none is left."""
        return run(self.client, self._site, self._leave(timeout))

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until all parties arrived (enter, then give the place back at once)."""
        return run(self.client, self._site, self._wait(timeout))

    def is_open(self) -> bool:
        return run(self.client, self._site, self._is_open())

    def arrived(self) -> list[Holder]:
        """The parties holding a place now, by the broker."""
        return run(self.client, self._site, self._arrived())

    def __enter__(self) -> "Barrier":
        self.enter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        run(self.client, self._site, self._exit(exc))


class AsyncBarrier(_BarrierCore):
    """:class:`Barrier` for an AsyncClient."""

    def __init__(self, client: AsyncClient, name: str, parties: int, *, poll: float = FALLBACK_POLL_S) -> None:
        check_client(client, AsyncClient, "AsyncBarrier")
        super().__init__(client, name, parties, poll, async_site(client))

    async def enter(self, timeout: float | None = None) -> bool:
        return await arun(self.client, self._site, self._enter(timeout))

    async def leave(self, timeout: float | None = None) -> bool:
        return await arun(self.client, self._site, self._leave(timeout))

    async def wait(self, timeout: float | None = None) -> bool:
        return await arun(self.client, self._site, self._wait(timeout))

    async def is_open(self) -> bool:
        return await arun(self.client, self._site, self._is_open())

    async def arrived(self) -> list[Holder]:
        return await arun(self.client, self._site, self._arrived())

    async def __aenter__(self) -> "AsyncBarrier":
        await self.enter()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await arun(self.client, self._site, self._exit(exc))
