"""One agent on the mesh, held for a surface whose user cannot hold a socket: the MCP server
(``zmesh mcp``: a coding agent's model calls tools) and, later, the HTTP gateway.

Rules it keeps:

* One session is one agent. It registers from its own connection with its own lease, and
  AsyncClient keeps the lease alive. Closing the session unregisters the agent, so what it
  held goes back at once.
* The tokens stay here. The fencing token of every claim the agent holds and the delivery
  token of every message pushed to it are kept by task id and message id. Callers pass ids
  only: a model never copies a token.
* Every broker call is shielded from cancellation. A call the broker answered is always
  seen here, so a claim taken as the caller gives up is known, and it is released. It is
  never left on a lease that the heartbeat keeps alive.
* ``wait_for_work`` is the wait-for-work recipe (zmesh/recipes/work.py, the loop ``zmesh
  wait`` runs too): event-driven, with no polling loop against the broker. The task events
  and the pushes to the agent (fed in by this session, which keeps their tokens) wake it; it
  clears its wake-up before it looks for work, so anything that arrives while it looks wakes
  it again. A wait that is cancelled releases what it claimed in that call. A message a wait
  answers with stays unread (``read_messages`` reads it), so an answer that never reached the
  caller loses nothing.
* A re-issued wait is answered again, never with a second claim (zmesh/adapters/grants.py).
  Every task a wait hands out (claimed, or assigned) carries a ``handle`` and stays a grant
  until its claim ends; the next wait answers the oldest grant again (``repeated: true``),
  after checking at the broker that the claim is still this agent's. A session that starts
  on a lease holding claims it does not know (an earlier process of the same agent) adopts
  them as grants, so nothing is left on a lease its heartbeat keeps alive.
* Results are small dicts, the same for every surface: task and message views, not the
  broker's full records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

import anyio

from .. import protocol
from ..client import AsyncClient
from ..client._inbox import Message
from ..errors import InvalidArgument, NotFound, ZmeshError
from ..recipes import AsyncWorkWaiter, Work
from . import defaults
from .grants import Grant, Grants

log = logging.getLogger("zmesh.adapters.session")

#: seconds between progress reports while wait_for_work waits (keepalives; defaults.py says why)
PROGRESS_EVERY_S = defaults.PROGRESS_EVERY_S
#: longest text kept of a message body or task data in a view (results stay small)
MAX_VIEW_CHARS = 4000

Progress = Callable[[float, float], Awaitable[None]]


@dataclass
class Held:
    """A claim this agent holds: the fencing token the caller never sees."""

    token: int
    expires_at: float | None


def task_view(record: dict[str, Any] | None, task_id: str, *, claimed: bool,
              expires_in: float | None = None) -> dict[str, Any]:
    """What a caller needs of a task to work on it."""
    record = record or {}
    return {"id": task_id, "type": record.get("type", "task"), "priority": record.get("priority", 0),
            "data": record.get("data"), "requires": list(record.get("requires") or ()),
            "attempts": record.get("attempts", 0), "claimed": claimed,
            "expires_in": expires_in if claimed else None}


def message_view(body: dict[str, Any]) -> dict[str, Any]:
    """What a caller needs of a message to act on it (the delivery token stays here)."""
    context = body.get("context") or {}
    return {"id": body["id"], "from": body.get("from"), "subject": body.get("subject", ""),
            "body": body.get("body"), "priority": body.get("priority", "normal"),
            "type": body.get("type", "message"), "requires_ack": bool(body.get("requires_ack")),
            "correlation_id": body.get("correlation_id"), "task": context.get("task"), "ts": body.get("ts")}


class AgentSession:
    """One agent's connection, claims and inbox, driven by async calls (see the module rules)."""

    def __init__(self, endpoint: str | None, agent: str, *, capabilities: Iterable[str] = (),
                 ttl: float | None = None, timeout: float = 5.0, heartbeat: bool = True) -> None:
        self.agent = protocol.KINDS["id"]("agent", agent)
        self.capabilities = sorted(set(protocol.KINDS["namelist"]("capabilities", list(capabilities))))
        #: False: the owner renews the lease (renew()); the HTTP gateway does on each request
        self.client = AsyncClient(endpoint, agent=self.agent, capabilities=self.capabilities, ttl=ttl,
                                  timeout=timeout, on_lease_lost=self._lease_lost, heartbeat=heartbeat)
        self.held: dict[str, Held] = {}
        #: the tasks waits handed out that a re-issued wait answers again
        self.grants = Grants()
        self.delivery_tokens: dict[str, int] = {}
        #: waits for work; this session feeds it the pushes (it keeps their tokens), and keeps
        #: what arrived between two waits (work.assigned, work.pushed)
        self.work = AsyncWorkWaiter(self.client, capabilities=self.capabilities, listen=False, poll=None)
        self._start_lock = asyncio.Lock()
        self.started = False
        self.leases_lost = 0
        #: called (sync) with each assignment or message pushed while nobody waits (a channel)
        self.on_idle_push: Callable[[str, Message], Any] | None = None

    # ------------------------------------------------------------ life
    async def start(self) -> None:
        """Connect and register; idempotent, so a session whose broker was away at first
        starts at its next call."""
        async with self._start_lock:
            if self.started:
                return
            await self.client.connect()
            await self.client.on_task(self._arrived_task)
            await self.client.on_message(self._arrived_message)
            await self._adopt()
            self.started = True
            log.info("agent %s registered at %s (lease %s)", self.agent, self.client.endpoint, self.client.lease)

    async def _adopt(self) -> None:
        """Claims the agent's lease holds that this session does not know (an earlier process
        of the same agent, whose answer or whole life was lost) become grants: the next wait
        hands them out again instead of leaving them on a lease this session keeps alive."""
        try:
            info = await self.client.agent_info()
        except ZmeshError as exc:  # best effort: the session works without it (a later wait finds nothing to adopt)
            log.warning("could not list the claims on %s's lease at start: %s", self.agent, exc.message)
            return
        adopted = []
        for task in info.get("claims") or ():
            if task in self.held:
                continue
            try:
                record = await self.client.task(task)
            except ZmeshError:  # not a task (a reservation, a delivery): nothing to hand out
                continue
            token = record.get("token")
            if record.get("owner") == self.agent and token:
                expires = record.get("expires_in")
                self.held[task] = Held(token, None if expires is None else time.time() + expires)
                self.grants.add(task, adopted=True)
                adopted.append(task)
        if adopted:
            log.info("agent %s holds claims from an earlier connection of its lease: %s; the next "
                     "wait_for_work hands them out again", self.agent, ", ".join(adopted))

    async def close(self) -> None:
        """Unregister (the broker releases the agent's claims and reservations) and disconnect."""
        self.work.close()
        with anyio.CancelScope(shield=True):
            await self.client.aclose(unregister=self.started)
        self.started = False

    async def renew(self) -> None:
        """Renew the agent's lease now (registering it again if it lapsed)."""
        with anyio.CancelScope(shield=True):
            await self.start()
            await self.client.keepalive()

    async def set_capabilities(self, capabilities: Iterable[str]) -> None:
        """Register again with these capabilities (the lease and claims stay)."""
        caps = sorted(set(protocol.KINDS["namelist"]("capabilities", list(capabilities))))
        if caps == self.capabilities:
            return
        self.client._lease.capabilities = caps
        self.capabilities = caps
        self.work.capabilities = caps
        if self.started:
            await self.call(self.client.register, capabilities=caps, ttl=self.client._lease.ttl)

    @property
    def renew_every(self) -> float:
        """Seconds between renewals that keep the lease alive."""
        return self.client._lease.interval

    async def call(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """One broker call, started if needed and shielded from cancellation (module rules)."""
        with anyio.CancelScope(shield=True):
            await self.start()
            return await fn(*args, **kwargs)

    # ------------------------------------------------------------ what arrives
    def _arrived_task(self, msg: Message) -> None:
        claim = msg.claim
        if claim is not None:
            self.held[claim.task_id] = Held(claim.token, claim.expires_at)
        self.work.arrived_task(msg)
        self._delivered(msg, "task")

    def _arrived_message(self, msg: Message) -> None:
        if msg.token is not None:
            self.delivery_tokens[msg.id] = msg.token
        self.work.arrived_message(msg)
        self._delivered(msg, "message")

    def _delivered(self, msg: Message, kind: str) -> None:
        if not self.work.waiting and self.on_idle_push is not None:
            try:
                self.on_idle_push(kind, msg)
            except Exception:  # a relay bug must not lose the push: it stays queued for the next wait
                log.exception("idle push relay failed for %s", msg.id)

    def _lease_lost(self, _exc: ZmeshError) -> None:
        self.leases_lost += 1
        lost = sorted(self.held)
        self.held.clear()
        self.grants.settle_all()
        if lost:
            log.warning("lease of %s lapsed; claims on %s went back to the queue", self.agent, ", ".join(lost))

    # ------------------------------------------------------------ tasks
    def _took(self, claim: Any) -> dict[str, Any]:
        self.held[claim.task_id] = Held(claim.token, claim.expires_at)
        return task_view(claim.task, claim.task_id, claimed=True, expires_in=claim.expires_in)

    async def claim_next(self, ttl: float | None = None, taken: list[str] | None = None) -> dict[str, Any] | None:
        """The best task for this agent, claimed; ``taken`` gets its id as soon as it is
        granted (before any other await: a cancelled wait knows what to give back)."""
        claim = await self.call(self.client.claim_next, ttl=ttl)
        if claim is None:
            return None
        if taken is not None:
            taken.append(claim.task_id)
        return self._took(claim)

    async def claim_task(self, task: str, ttl: float | None = None) -> dict[str, Any]:
        return self._took(await self.call(self.client.try_claim, task, ttl=ttl))

    def _ended(self, task: str) -> None:
        """The agent's claim on ``task`` ended: no token kept, no grant handed out again."""
        self.held.pop(task, None)
        self.grants.settle(task)

    def token(self, task: str) -> int | None:
        held = self.held.get(task)
        return None if held is None else held.token

    async def complete(self, task: str, result: Any = None) -> dict[str, Any]:
        record = await self.call(self.client.complete, task, token=self.token(task), result=result)
        self._ended(task)
        return {"task": task, "status": record.get("status", "completed")}

    async def fail(self, task: str, error: str) -> dict[str, Any]:
        record = await self.call(self.client.fail, task, token=self.token(task), error=error)
        self._ended(task)
        return {"task": task, "status": record.get("status"), "attempts": record.get("attempts")}

    async def release(self, task: str) -> dict[str, Any]:
        record = await self.call(self.client.release, task, token=self.token(task))
        self._ended(task)
        return {"task": task, "status": record.get("status", "available")}

    # ------------------------------------------------------------ waiting
    def _answer(self, work: Work) -> dict[str, Any]:
        """The surface's answer for what the wait found (no await: nothing can cut it short)."""
        if work.kind == "timeout":
            return {"kind": "timeout", "waited_s": work.waited_s}
        if work.kind == "message":
            return {"kind": "message", "message": message_view(work.message.raw), "waited_s": work.waited_s}
        task_id = work.task_id or ""
        if work.assigned:
            held = self.held.get(task_id)
            expires = None if held is None or held.expires_at is None else max(0.0, held.expires_at - time.time())
            found = {"kind": "task", "task": task_view(work.record, task_id, claimed=held is not None,
                                                       expires_in=expires),
                     "assigned": True, "waited_s": work.waited_s}
            return self._granted(found, self.grants.add(task_id, assigned=True)) if held else found
        if work.claim is not None:
            found = {"kind": "task", "task": self._took(work.claim), "assigned": False, "waited_s": work.waited_s}
            return self._granted(found, self.grants.add(task_id))
        return {"kind": "task", "task": task_view(work.record, task_id, claimed=False), "assigned": False,
                "waited_s": work.waited_s}

    @staticmethod
    def _granted(found: dict[str, Any], grant: Grant) -> dict[str, Any]:
        found["handle"] = grant.handle
        return found

    async def _still_mine(self, grant: Grant) -> dict[str, Any] | None:
        """The grant's task view when its claim is still this agent's at the broker (with the
        token the session holds), else None: the grant is settled."""
        held = self.held.get(grant.task)
        try:
            record = await self.call(self.client.task, grant.task)
        except NotFound:
            record = None
        if held is None or record is None or record.get("owner") != self.agent or record.get("token") != held.token:
            self._ended(grant.task)
            log.info("grant %s of %s (task %s) is settled: the claim is no longer this agent's",
                     grant.handle, self.agent, grant.task)
            return None
        return task_view(record, grant.task, claimed=True, expires_in=record.get("expires_in"))

    async def _again(self, handle: str | None) -> dict[str, Any] | None:
        """A re-issued wait: the grant named by ``handle``, else the oldest outstanding one,
        answered again while its claim is still this agent's (grants.py)."""
        if handle is not None:
            named = self.grants.get(handle)
            grants = [] if named is None else [named]
        else:
            grants = list(self.grants.outstanding())
        for grant in grants:
            view = await self._still_mine(grant)
            if view is not None:
                return {"kind": "task", "task": view, "assigned": grant.assigned, "handle": grant.handle,
                        "repeated": True, "waited_s": 0.0}
        if handle is not None:
            raise NotFound(f"handle '{handle}' names no task this agent still holds: it was completed, failed, "
                           "released or lapsed, or another session gave it; call again without a handle",
                           {"field": "handle"})
        return None

    async def wait_for_work(self, timeout_s: float, *, claim: bool = True, ttl: float | None = None,
                            handle: str | None = None, progress: Progress | None = None,
                            progress_every: float = PROGRESS_EVERY_S) -> dict[str, Any]:
        """Until a task is assigned to this agent or claimable by it (claimed when ``claim``),
        or a message for it arrives, or ``timeout_s`` passes: ``{kind: task|message|timeout,
        ...}``; a task handed out carries a ``handle``. A task handed out before and still
        held (an answer the caller may have lost) is answered again at once, ``repeated``
        (``handle`` names which). The agent is idle while it waits (busy after a claim)."""
        await self.call(self.client.hello)  # unreachable: raised here, before the agent is reported idle
        if handle is not None:
            handle = protocol.KINDS["id"]("handle", handle)
        again = await self._again(handle)
        if again is not None:
            return again
        tick = None if progress is None else (lambda done, _total: progress(done, timeout_s))  # a wait with a timeout
        work = await self.work.wait(timeout_s, claim=claim, ttl=ttl, report_idle=not self.held,
                                    progress=tick, progress_every=progress_every)
        return self._answer(work)  # no await after the wait: its checkpoint was the last place to cancel

    async def surfaced(self, kind: str, msg: Message) -> None:
        """A push shown by other means (a channel): no wait answers it again; a message is
        marked read (the channel delivered it into the session)."""
        queue = self.work.assigned if kind == "task" else self.work.pushed
        try:
            queue.remove(msg)
        except ValueError:
            return  # a wait took it first
        if kind == "message":
            await self.call(self.client.mark_read, [msg.id])

    # ------------------------------------------------------------ presence, paths, messages
    async def set_status(self, state: str, *, task: str | None = None, reason: str | None = None,
                         message: str | None = None, cost: float | None = None) -> dict[str, Any]:
        got = await self.call(self.client.report, state, task=task, reason=reason, message=message, cost=cost)
        return {"agent": self.agent, "state": got.get("state", state), "position": got.get("position")}

    async def reserve(self, paths: list[str], *, shared: bool = False, ttl: float | None = None,
                      wait_s: float = 0.0) -> dict[str, Any]:
        got = await self.call(self.client.reserve, paths, shared=shared, ttl=ttl, wait=wait_s)
        return {"reservations": [{"pattern": r["pattern"], "mode": r["mode"], "expires_in": r["expires_in"]}
                                 for r in got["reservations"]]}

    async def release_paths(self, paths: list[str]) -> dict[str, Any]:
        return {"released": await self.call(self.client.release_paths, paths)}

    async def send(self, subject: str, body: Any = None, **address: Any) -> dict[str, Any]:
        got = await self.call(self.client.send, subject, body, **address)
        return {"id": got["id"], "addressed": got["addressed"], "online": got["online"], "queued": got["queued"]}

    async def read_messages(self, *, limit: int, peek: bool = False) -> dict[str, Any]:
        found = await self.call(self.client.messages, agent=self.agent, unread=True, limit=limit + 1)
        more, found = len(found) > limit, found[:limit]
        for body in found:
            token = (body.get("delivery") or {}).get("token")
            if token is not None:
                self.delivery_tokens[body["id"]] = token
        ids = {body["id"] for body in found}
        if not peek and ids:
            await self.call(self.client.mark_read, sorted(ids))
            self.work.pushed = deque(m for m in self.work.pushed if m.id not in ids)
        return {"messages": [message_view(body) for body in found], "more": more}

    async def ack(self, message: str, note: str | None = None) -> dict[str, Any]:
        got = await self.call(self.client.ack, message, token=self.delivery_tokens.get(message), note=note,
                              agent=self.agent)
        self.delivery_tokens.pop(message, None)
        return {"id": got["id"], "acked": True, "already": bool(got.get("already"))}

    async def agents(self) -> dict[str, Any]:
        found = await self.call(self.client.agents)
        return {"agents": [{"id": a["id"], "state": a["state"], "liveness": a["liveness"], "task": a["task"],
                            "capabilities": a["capabilities"], "message": a["message"]} for a in found]}

    async def whoami(self) -> dict[str, Any]:
        mine = await self.call(self.client.reservations, agent=self.agent)
        return {"agent": self.agent, "endpoint": self.client.endpoint, "lease": self.client.lease,
                "capabilities": self.capabilities, "holding": sorted(self.held),
                "reservations": [{"pattern": r["pattern"], "mode": r["mode"], "expires_in": r["expires_in"]}
                                 for r in mine],
                "unread_pushed": len(self.work.pushed) + len(self.work.assigned)}


def check_address(to: str | None, group: str | None, capability: str | None, everyone: bool) -> dict[str, Any]:
    """Exactly one address, named as the send op names it (a clear refusal otherwise)."""
    given: dict[str, Any] = {k: v for k, v in (("to", to), ("group", group), ("capability", capability)) if v}
    if everyone:
        given["all"] = True
    if len(given) != 1:
        raise InvalidArgument("give exactly one address: to (an agent), group, capability or all",
                              {"field": "to"})
    return given
