"""``Semaphore``: at most N holders at once (GPU slots, API quotas), kazoo's ``Semaphore``
on N task claims.

Rules it keeps:

* The semaphore ``name`` is the task ``sem:<name>`` (type ``zmesh.semaphore``), whose data
  holds ``max_leases``, and N slot tasks ``sem:<name>#1`` .. ``sem:<name>#N``. A holder holds
  exactly one slot's claim. There are N claims, so there are at most N holders. This is the
  same machinery as the lock (``_slots``); every grant has a larger fencing token.
* N is fixed by the first creator. ``task_create`` lets exactly one creator make
  ``sem:<name>``, and every later Semaphore of that name must give the same
  ``max_leases``, or it is refused with ``InvalidArgument`` naming ``max_leases`` (with
  the N in force).
* One Semaphore object holds at most one slot; an agent that needs two makes two objects
  (they never take the same slot: ``_watch.Holds``).
* A waiter wakes on the ``task.released`` event of any slot and first tries the slot that
  was freed. ``poll`` is only the fallback.

What a lost lease means for a holder:

* The agent dies or its heartbeat stops: after its lease TTL the broker releases its slot,
  and one waiter takes it with a larger token. The count of holders never goes above N.
  For a while it may be below N, the holder's TTL at most.
* A network partition: the slot passes on after the TTL, while the cut-off holder may
  still believe it holds one. Then N + 1 agents act, and only N of them hold a claim. A
  quota that must never be exceeded is enforced where it is spent, with the fencing token
  of the slot (:attr:`Semaphore.token`, :meth:`Semaphore.check`).
* After the client registered again, ``is_acquired`` is False and ``release()`` returns
  False; ``acquire()`` takes a slot anew.
"""

from __future__ import annotations

import time
from typing import Any

from zmesh import AsyncClient, Client, InvalidArgument

from ._drive import Site, arun, async_site, run, sync_site
from ._flow import (FALLBACK_POLL_S, Flow, agent_of, check_bool, check_client, check_count, check_name,
                    check_seconds, check_timeout)
from ._held import AsyncHeld, Held
from ._slots import SlotSet, ensure_task, holders_of, recipe_task
from ._watch import Holder

PREFIX = "sem:"
TYPE = "zmesh.semaphore"
SLOT_TYPE = "zmesh.semaphore.slot"
#: most slots a semaphore may have (a waiter tries each when no event says which is free)
MAX_LEASES = 1000


class _SemaphoreCore:
    def __init__(self, client: Any, name: str, max_leases: Any, poll: float, site: Site) -> None:
        self.max_leases = check_count("max_leases", max_leases, MAX_LEASES)
        self.name = check_name(name, prefix=PREFIX, suffix=f"#{max_leases}")
        self.client = client
        self.agent = agent_of(client, "a Semaphore")
        self.poll = check_seconds("poll", poll)
        self.task_id = PREFIX + name
        self._prefix = f"{self.task_id}#"
        self.slot_ids = [f"{self._prefix}{i}" for i in range(1, max_leases + 1)]
        self._site = site
        self._slots = SlotSet(site, self.agent, self.slot_ids, poll=self.poll, make=self._slot_task)
        self._ready = False

    def _slot_task(self, slot_id: str) -> dict[str, Any]:
        return recipe_task(SLOT_TYPE, {"recipe": "semaphore", "name": self.name,
                                       "slot": int(slot_id[len(self._prefix):])})

    @property
    def token(self) -> int | None:
        """The fencing token of the slot held (None: none)."""
        return self._slots.token

    @property
    def slot(self) -> str | None:
        """The task id of the slot held (None: none)."""
        return self._slots.task_id

    @property
    def is_acquired(self) -> bool:
        return self._slots.is_acquired

    def _define(self) -> Flow[None]:
        if self._ready:
            return
        record = yield from ensure_task(self.task_id, TYPE, {"recipe": "semaphore", "name": self.name,
                                                              "max_leases": self.max_leases})
        fixed = (record.get("data") or {}).get("max_leases")
        if fixed != self.max_leases:
            raise InvalidArgument(f"semaphore '{self.name}' was created with max_leases={fixed}, not "
                                  f"{self.max_leases}: the first creator fixes it",
                                  {"field": "max_leases", "max_leases": fixed, "given": self.max_leases})
        self._ready = True

    def _acquire(self, blocking: Any, timeout: Any) -> Flow[bool]:
        check_bool("blocking", blocking)
        seconds = check_timeout("timeout", timeout)
        return self._acquire_flow(blocking, seconds)

    def _acquire_flow(self, blocking: bool, timeout: float | None) -> Flow[bool]:
        yield from self._define()
        return (yield from self._slots.acquire_flow(blocking, timeout, time.monotonic))

    def _holders_flow(self) -> Flow[list[Holder]]:
        yield from self._define()
        held = yield from holders_of(self.slot_ids, self._prefix)
        return sorted(held.values(), key=lambda h: h.token)

    def __repr__(self) -> str:
        state = f"{self.slot} token={self.token}" if self.token is not None else "no slot"
        return f"<{type(self).__name__} {self.name!r} max_leases={self.max_leases} agent={self.agent!r} {state}>"


class Semaphore(Held, _SemaphoreCore):
    """At most ``max_leases`` holders of ``name`` at once (see the module docstring)."""

    def __init__(self, client: Client, name: str, max_leases: int = 1, *, poll: float = FALLBACK_POLL_S) -> None:
        check_client(client, Client, "Semaphore")
        super().__init__(client, name, max_leases, poll, sync_site(client))

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take a slot: True once held (at once if this object holds one)."""
        return run(self.client, self._site, self._acquire(blocking, timeout))

    def holders(self) -> list[Holder]:
        """Who holds a slot now, by the broker, oldest claim first."""
        return run(self.client, self._site, self._holders_flow())


class AsyncSemaphore(AsyncHeld, _SemaphoreCore):
    """:class:`Semaphore` for an AsyncClient."""

    def __init__(self, client: AsyncClient, name: str, max_leases: int = 1, *,
                 poll: float = FALLBACK_POLL_S) -> None:
        check_client(client, AsyncClient, "AsyncSemaphore")
        super().__init__(client, name, max_leases, poll, async_site(client))

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        return await arun(self.client, self._site, self._acquire(blocking, timeout))

    async def holders(self) -> list[Holder]:
        return await arun(self.client, self._site, self._holders_flow())
