"""``Claimed``: hold one task's claim for the length of a ``with`` block, renewed while it
runs, and given back (or completed) at the end.

How a claim lasts in zmesh, and so what this recipe must do:

* Every claim hangs on its agent's lease. The lease lasts the agent's TTL after its last
  request, and a ``Client`` made with an agent heartbeats every third of its TTL from a
  background thread (task). A claim taken without a TTL of its own (``ttl=None``, the
  default) therefore lives as long as the client does: the client's keepalive covers it,
  and no renewer runs.
* A claim taken with ``ttl`` lapses ``ttl`` seconds after it was taken or last renewed,
  even while the agent lives. The broker then publishes ``task.released``, reason
  ``claim_expired``. Then this recipe renews it (``renew(task, token, ttl)``) every third
  of ``ttl`` until the block ends. A renewal also extends the lease to at least ``ttl``.
  The renewer stops at the first answer that says the claim is gone (ClaimExpired,
  LeaseExpired, StaleToken, NotOwner, NotFound) and keeps that answer in ``lost``. Other
  failures (Unreachable) are retried on the next tick. Only the broker decides that a
  claim lapsed.
* A client made with ``heartbeat=False`` keeps no lease alive by itself: its owner calls
  ``keepalive()``, or uses ``ttl`` so the renewer does.

Rules it keeps:

* On entry it claims the task (Conflict naming the holder if another agent holds it,
  unless ``blocking``: then it waits for the task's release event). On exit it releases
  the claim, with its token. With ``complete=True`` and no exception it completes the task
  with ``.result``. With ``fail_on_error=True`` and an exception it fails the task (an
  attempt counted). A release refused because the claim had ended is not an error. A
  complete refused for that reason is raised, because the result was not recorded.
* :attr:`Claimed.token` is the claim's fencing token, to pass to whatever the work
  writes.

What a lost lease (or claim) means: the broker released the task, and another agent may
hold it with a larger token. ``is_held`` turns False (the task's events say so),
``lost`` holds the renewer's refusal (when ``ttl`` was given), and on exit ``complete``
raises while ``release`` is skipped quietly. Work done after the loss must not be
trusted: the fencing token tells the resources it wrote to.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from types import TracebackType
from typing import Any

from zmesh import AsyncClient, Client, Conflict, NotFound, ZmeshError

from ._drive import Site, arun, async_site, run, sync_site
from ._flow import (FALLBACK_POLL_S, Flow, Wait, agent_of, call, check_bool, check_client, check_name,
                    check_seconds, check_timeout, check_ttl)
from ._slots import GONE, SlotSet
from ._watch import Interest

log = logging.getLogger("zmesh.recipes")

#: a claim with a TTL is renewed every RENEW_EVERY of it, as the client heartbeats its lease:
#: two renewals in a row may be lost before the claim lapses
RENEW_EVERY = 1 / 3


class _ClaimedCore:
    def __init__(self, client: Any, task_id: str, ttl: Any, complete: Any, fail_on_error: Any,
                 blocking: Any, timeout: Any, poll: float, site: Site) -> None:
        self.task_id = check_name(task_id, prefix="", field="task_id")
        self.client = client
        self.agent = agent_of(client, "Claimed")
        self.ttl = check_ttl("ttl", ttl)
        self.complete = check_bool("complete", complete)
        self.fail_on_error = check_bool("fail_on_error", fail_on_error)
        self.blocking = check_bool("blocking", blocking)
        self.timeout = check_timeout("timeout", timeout)
        self.poll = check_seconds("poll", poll)
        #: what ``complete`` stores as the task's result (set it inside the block)
        self.result: Any = None
        #: the broker's answer that ended the claim, when the renewer got one
        self.lost: ZmeshError | None = None
        #: how many renewals succeeded
        self.renewals = 0
        self._site = site
        self._slots = SlotSet(site, self.agent, [task_id], make=None, poll=self.poll, ttl=self.ttl)
        self._stop: Interest | None = None

    @property
    def token(self) -> int | None:
        """The claim's fencing token (None before entry and after exit)."""
        return self._slots.token

    @property
    def claim(self) -> Any:
        """The Claim the broker granted (task_id, token, expires_at, ...)."""
        return self._slots.claim

    @property
    def is_held(self) -> bool:
        """Held, as far as the task's events have shown."""
        return self._slots.is_acquired and self.lost is None

    def _enter_flow(self) -> Flow[None]:
        if not (yield from self._slots.acquire_flow(self.blocking, self.timeout, time.monotonic)):
            try:
                record = yield call("task", self.task_id)
            except NotFound:
                record = {}
            holder, status = record.get("owner"), record.get("status")
            waited = f" (waited {self.timeout:g} s)" if self.blocking and self.timeout is not None else ""
            said = f"is held by '{holder}'" if status == "claimed" else f"is {status}, not available"
            raise Conflict(f"task '{self.task_id}' {said}{waited}",
                           {"task": self.task_id, "status": status, "holder": holder})
        self.lost = None
        if self.ttl is not None:
            self._stop = Interest(self._site.board.make_signal())

    def _renew_flow(self, stop: Interest, ttl: float) -> Flow[None]:
        """Renew every RENEW_EVERY of ``ttl`` until ``stop`` fires or the broker says the
        claim is gone (module rules)."""
        claim = self._slots.claim
        while not (yield Wait(stop, ttl * RENEW_EVERY)):
            try:
                yield call("renew", claim.task_id, token=claim.token, ttl=ttl)
                self.renewals += 1
            except GONE as exc:
                self.lost = exc
                log.warning("claim on %s (token %s) is gone: %s", claim.task_id, claim.token, exc)
                return
            except ZmeshError as exc:
                log.warning("renewal of %s (token %s) failed, trying again: %s", claim.task_id, claim.token, exc)

    def _exit_flow(self, exc: BaseException | None) -> Flow[None]:
        claim = self._slots.claim
        if claim is None:
            return
        if exc is None and self.complete:
            try:
                yield call("complete", claim.task_id, token=claim.token, result=self.result)
            finally:
                self._slots.forget()
            return
        if exc is not None and self.fail_on_error:
            try:
                yield call("fail", claim.task_id, token=claim.token, error=f"{type(exc).__name__}: {exc}"[:4000])
            except GONE:
                pass
            finally:
                self._slots.forget()
            return
        yield from self._slots.exit_flow(exc)

    def __repr__(self) -> str:
        state = f"token={self.token}" if self.token is not None else "not held"
        return f"<{type(self).__name__} {self.task_id!r} agent={self.agent!r} {state}>"


class Claimed(_ClaimedCore):
    """``with Claimed(client, "build-7", complete=True) as held: ... held.token``
    (see the module docstring)."""

    def __init__(self, client: Client, task_id: str, *, ttl: float | None = None, complete: bool = False,
                 fail_on_error: bool = False, blocking: bool = False, timeout: float | None = None,
                 poll: float = FALLBACK_POLL_S) -> None:
        check_client(client, Client, "Claimed")
        super().__init__(client, task_id, ttl, complete, fail_on_error, blocking, timeout, poll, sync_site(client))
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> "Claimed":
        run(self.client, self._site, self._enter_flow())
        if self._stop is not None and self.ttl is not None:
            self._renewer = threading.Thread(target=run, name=f"zmesh-renew-{self.task_id}", daemon=True,
                                             args=(self.client, self._site, self._renew_flow(self._stop, self.ttl)))
            self._renewer.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._stop is not None:
            self._stop.fire()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        run(self.client, self._site, self._exit_flow(exc))


class AsyncClaimed(_ClaimedCore):
    """:class:`Claimed` for an AsyncClient: ``async with AsyncClaimed(client, "t") as held``."""

    def __init__(self, client: AsyncClient, task_id: str, *, ttl: float | None = None, complete: bool = False,
                 fail_on_error: bool = False, blocking: bool = False, timeout: float | None = None,
                 poll: float = FALLBACK_POLL_S) -> None:
        check_client(client, AsyncClient, "AsyncClaimed")
        super().__init__(client, task_id, ttl, complete, fail_on_error, blocking, timeout, poll,
                         async_site(client))
        self._renewer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "AsyncClaimed":
        await arun(self.client, self._site, self._enter_flow())
        if self._stop is not None and self.ttl is not None:
            self._renewer = asyncio.ensure_future(arun(self.client, self._site,
                                                       self._renew_flow(self._stop, self.ttl)))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._stop is not None:
            self._stop.fire()
        if self._renewer is not None:
            await self._renewer
            self._renewer = None
        await arun(self.client, self._site, self._exit_flow(exc))
