"""``Lock``: named mutual exclusion between agents (kazoo's ``Lock``), on one task claim.

Rules it keeps:

* The lock named ``name`` is the task ``lock:<name>`` (type ``zmesh.lock``). Holding the
  lock means holding that task's claim. The broker grants it to exactly one of any number
  of racers and gives each grant a larger fencing token, :attr:`Lock.token`.
* Exclusion is between agents, and between Lock objects of one client: two objects of the
  same name exclude each other even though they share the agent (``_watch.Holds``). Two
  processes that register the *same agent id* are one agent to the broker: give each
  process its own id.
* ``acquire()`` waits for the lock's ``task.released`` event (the subscription's), never
  polling in a loop. ``poll`` is only the fallback: it bounds how long a missed wake-up
  could last.
* A Lock object is used by one thread (one task) at a time; make one object per thread
  (they exclude each other, as above).
* ``release()`` gives the claim back with its token. A claim that had ended already is not
  an error: release returns False.

What a lost lease means for the holder (kazoo ``protocol/states.py`` style):

* The agent dies or its heartbeat stops: the broker ends its lease after its TTL, releases
  the lock (``task.released``, reason ``lease_expired``), and a waiter takes it at once with
  a larger token. TTL + the broker's expiry sweep is the longest handover. The sweep runs at
  the deadline itself, because the broker's loop sleeps until the next one.
* A network partition: the broker cannot tell it from death. The lock passes on after the
  TTL, while the cut-off holder may still *believe* it holds it. :attr:`Lock.is_acquired`
  is only what the holder's events have shown, and a cut-off holder hears no events.
  :meth:`Lock.check` asks the broker. Protect the guarded resource with the fencing token:
  a write carrying a token smaller than the largest one the resource has seen must be
  refused. No timeout on the holder's side can replace that check.
* The lease lapsed and the client registered again (its next heartbeat does so): the old
  claim is gone, ``is_acquired`` is False and ``release()`` returns False. A new
  ``acquire()`` takes the lock again with a new token.
"""

from __future__ import annotations

import time
from typing import Any

from zmesh import AsyncClient, Client, NotFound

from ._drive import Site, arun, async_site, run, sync_site
from ._flow import (FALLBACK_POLL_S, Flow, agent_of, call, check_bool, check_client, check_name, check_seconds,
                    check_timeout)
from ._held import AsyncHeld, Held
from ._slots import SlotSet, ensure_task, recipe_task
from ._watch import Holder

PREFIX = "lock:"
TYPE = "zmesh.lock"


class _LockCore:
    """The lock's logic, for both drivers."""

    def __init__(self, client: Any, name: str, poll: float, site: Site) -> None:
        self.client = client
        self.name = check_name(name, prefix=PREFIX)
        self.task_id = PREFIX + name
        self.agent = agent_of(client, "a Lock")
        self.poll = check_seconds("poll", poll)
        self._site = site
        self._data = {"recipe": "lock", "name": name}
        self._slots = SlotSet(site, self.agent, [self.task_id], poll=self.poll,
                              make=lambda _id: recipe_task(TYPE, self._data))
        self._ready = False

    @property
    def token(self) -> int | None:
        """The fencing token of the claim held (None: not held)."""
        return self._slots.token

    @property
    def is_acquired(self) -> bool:
        """Held, as far as the broker's events have shown (see the module's lost-lease notes)."""
        return self._slots.is_acquired

    def _acquire(self, blocking: Any, timeout: Any) -> Flow[bool]:
        check_bool("blocking", blocking)
        seconds = check_timeout("timeout", timeout)
        return self._acquire_flow(blocking, seconds)

    def _acquire_flow(self, blocking: bool, timeout: float | None) -> Flow[bool]:
        if not self._ready:
            yield from ensure_task(self.task_id, TYPE, self._data)
            self._ready = True
        return (yield from self._slots.acquire_flow(blocking, timeout, time.monotonic))

    def _holder_flow(self) -> Flow[Holder | None]:
        try:
            record = yield call("task", self.task_id)
        except NotFound:
            return None
        if record.get("status") != "claimed" or not record.get("owner"):
            return None
        return Holder(record["owner"], record["token"])

    def __repr__(self) -> str:
        state = f"token={self.token}" if self.token is not None else "not held"
        return f"<{type(self).__name__} {self.name!r} agent={self.agent!r} {state}>"


class Lock(Held, _LockCore):
    """A named lock held by this client's agent (see the module docstring for the rules and
    for what a lost lease means). ``with Lock(client, "db-migrate") as lock: ... lock.token``."""

    def __init__(self, client: Client, name: str, *, poll: float = FALLBACK_POLL_S) -> None:
        check_client(client, Client, "Lock")
        super().__init__(client, name, poll, sync_site(client))

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lock: True once held. ``blocking=False`` tries once; ``timeout``
        (seconds, None: no limit) bounds the wait. True at once if this object holds it."""
        return run(self.client, self._site, self._acquire(blocking, timeout))

    def holder(self) -> Holder | None:
        """Who holds the lock now (agent and token), by the broker; None if nobody."""
        return run(self.client, self._site, self._holder_flow())


class AsyncLock(AsyncHeld, _LockCore):
    """:class:`Lock` for an AsyncClient: the same methods, awaited; ``async with``."""

    def __init__(self, client: AsyncClient, name: str, *, poll: float = FALLBACK_POLL_S) -> None:
        check_client(client, AsyncClient, "AsyncLock")
        super().__init__(client, name, poll, async_site(client))

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        return await arun(self.client, self._site, self._acquire(blocking, timeout))

    async def holder(self) -> Holder | None:
        return await arun(self.client, self._site, self._holder_flow())
