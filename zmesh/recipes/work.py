"""Wait for work: block until a task this agent may do is there (and claim it), a task is
assigned to it, or a message is pushed to it. This is the loop of ``zmesh wait``
(zmesh/cli/wait.py) and of the MCP/HTTP ``wait_for_work`` (zmesh/adapters/session.py),
written once.

Rules it keeps:

* The agent is the client's. A wait reports it idle first (``report_idle``); a Conflict
  means it holds a task already, and it waits all the same.
* It looks, in this order: a task assigned to the agent (``assign``: the broker claimed it
  on the agent's lease, and the push carries the claim); a message pushed to it (unless
  ``messages=False``); then a task it may do. With ``claim`` it calls ``claim_next`` (the
  broker picks: priority, then age, ``requires`` covered). Without ``claim`` it names the
  task claim_next would take and claims nothing.
* It is event-driven. It registers for the task events after which a task may be claimable
  (:data:`WORK_EVENTS`) and for the pushes before it looks. It clears its wake-up before
  each look, so whatever arrives while it looks makes it look again. ``poll`` (None: never)
  only bounds how long a lost wake-up could last.
* It answers a :class:`Work`: ``kind`` is ``task``, ``message`` or ``timeout``, and a
  timeout is a normal answer. ``waited_s`` says how long it waited.
* A wait cancelled after it claimed a task (``KeyboardInterrupt``, an asyncio
  cancellation) releases that claim before it re-raises, so a wait that gave up leaves no
  claim behind. An assignment is not released: the broker gave it, and the next wait
  still answers it if the owner puts it back.
* A :class:`WorkWaiter` lives across waits. Pushes that arrive between two waits are kept
  for the next (``assigned``, ``pushed``). An owner that keeps its own push callbacks
  (``listen=False``) feeds them in with :meth:`arrived_task` / :meth:`arrived_message`.

What a lost lease means: while it waits, nothing, because a waiter holds nothing. A task
it answered (claimed) hangs on the agent's lease like any claim: if the lease lapses
before the work is done, the broker releases it, another agent may claim it with a larger
token, and this agent's ``complete`` is refused (LeaseExpired or StaleToken).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

from zmesh import AsyncClient, Client, Conflict, InvalidArgument, ZmeshError

from ._drive import Site, arun, async_site, run, sync_site
from ._flow import (FALLBACK_POLL_S, Checkpoint, Deadline, Flow, Notify, Wait, agent_of, call, check_bool,
                    check_callable, check_client, check_seconds, check_timeout, check_ttl, watch)
from ._watch import Interest

log = logging.getLogger("zmesh.recipes")

#: task events after which a task may be claimable by an agent waiting for work
WORK_EVENTS = ("task.created", "task.available", "task.released", "task.failed", "task.requeued")
#: seconds between progress callbacks while a wait waits (the adapters' keepalives)
PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True)
class Work:
    """What a wait found. ``kind`` is ``task``, ``message`` or ``timeout``.

    A task: ``task_id`` and ``record`` (the task as listed; for an assignment, as the push
    carried it). ``claim`` is the Claim when the task is this agent's: claimed by this wait
    (``claim=True``), or assigned (``assigned``: the broker claimed it on the agent's
    lease). A message: ``message`` is the pushed zmesh Message, left unread."""

    kind: str
    waited_s: float = 0.0
    task_id: str | None = None
    claim: Any = None
    record: dict[str, Any] | None = None
    assigned: bool = False
    message: Any = None

    @property
    def claimed(self) -> bool:
        return self.claim is not None

    @property
    def token(self) -> int | None:
        return None if self.claim is None else int(self.claim.token)


def _capabilities(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise InvalidArgument(f"capabilities must be a list of strings, not a single string (did you mean "
                              f"[{value!r}]?)", {"field": "capabilities"})
    try:
        caps = list(value)
    except TypeError:
        raise InvalidArgument(f"capabilities must be a list of strings, not {type(value).__name__}",
                              {"field": "capabilities"}) from None
    if not all(isinstance(c, str) and c for c in caps):
        raise InvalidArgument("capabilities must be non-empty strings", {"field": "capabilities"})
    return sorted(set(caps))


class _WorkCore:
    def __init__(self, client: Any, capabilities: Any, messages: Any, listen: Any, poll: Any, site: Site) -> None:
        self.client = client
        self.agent = agent_of(client, "waiting for work")
        #: the agent's capabilities for a wait without claim (None: ask the broker for the
        #: registered ones) and for claim_next (None: the registered ones). An owner that
        #: registers new capabilities sets this too.
        self.capabilities = _capabilities(capabilities)
        self.messages = check_bool("messages", messages)
        self.listen = check_bool("listen", listen)
        self.poll = None if poll is None else check_seconds("poll", poll)
        #: assignments and messages pushed and not answered yet, oldest first
        self.assigned: deque[Any] = deque()
        self.pushed: deque[Any] = deque()
        self._site = site
        self._wakes: set[Interest] = set()
        self._receivers: list[Any] = []

    @property
    def waiting(self) -> int:
        """How many waits are waiting now."""
        return len(self._wakes)

    # ------------------------------------------------------------ pushes
    def arrived_task(self, msg: Any) -> None:
        """A task assigned to the agent (a push of type ``task.assign``)."""
        self.assigned.append(msg)
        self._wake()

    def arrived_message(self, msg: Any) -> None:
        """A message pushed to the agent (ignored with ``messages=False``)."""
        if self.messages:
            self.pushed.append(msg)
            self._wake()

    def _wake(self) -> None:
        for interest in list(self._wakes):
            interest.fire()

    def close(self) -> None:
        """Stop listening for pushes (the receivers this waiter registered). What it holds
        unanswered stays in ``assigned`` / ``pushed``; messages also stay in the broker."""
        for receiver in self._receivers:
            receiver.cancel()
        self._receivers = []
        if self.assigned or self.pushed:
            log.info("work waiter of %s closed with %d assignment(s) and %d message(s) unanswered",
                     self.agent, len(self.assigned), len(self.pushed))

    # ------------------------------------------------------------ the flow
    def _wait(self, timeout: Any, claim: Any, ttl: Any, report_idle: Any, progress: Any,
              progress_every: Any) -> Flow[Work]:
        seconds = check_timeout("timeout", timeout)
        check_bool("claim", claim)
        check_bool("report_idle", report_idle)
        check_callable("progress", progress, allow_none=True)
        return self._wait_flow(seconds, claim, check_ttl("ttl", ttl), report_idle, progress,
                               check_seconds("progress_every", progress_every), time.monotonic)

    def _wait_flow(self, timeout: float | None, claim: bool, ttl: float | None, report_idle: bool,
                   progress: Callable[[float, float | None], Any] | None, progress_every: float,
                   clock: Callable[[], float]) -> Flow[Work]:
        yield call("hello")  # an unreachable broker is raised here, before anything else
        board = yield from watch()
        wake = board.interest(topics=WORK_EVENTS)  # before the first look: nothing is missed
        self._wakes.add(wake)
        taken: Any = None
        try:
            if self.listen and not self._receivers:
                self._receivers.append((yield call("on_task", self.arrived_task)))
                if self.messages:
                    self._receivers.append((yield call("on_message", self.arrived_message)))
            if report_idle:
                try:
                    yield call("idle", message="waiting for work")
                except Conflict:  # it holds a task (one assigned as it connected): it waits all the same
                    pass
            deadline = Deadline(clock, timeout)
            next_progress = deadline.start + progress_every
            look = True
            while True:
                if look:
                    wake.reset()
                    looked = clock()
                    found = yield from self._look(claim, ttl)
                    if found is not None:
                        if found.claim is not None and not found.assigned:
                            taken = found.claim
                        yield Checkpoint()  # a caller that gave up during the look is told here
                        taken = None
                        return replace(found, waited_s=round(deadline.elapsed(), 3))
                if deadline.passed():
                    return Work("timeout", waited_s=round(deadline.elapsed(), 3))
                step = deadline.step(None if self.poll is None else max(0.0, looked + self.poll - clock()))
                if progress is not None:
                    now = clock()
                    if now >= next_progress:
                        yield Notify(progress, (now - deadline.start, timeout))
                        next_progress = now + progress_every
                    step = min(step, max(0.0, next_progress - clock()))
                # look again when woken, or when the fallback poll is due; a progress tick alone
                # asks the broker nothing
                look = (yield Wait(wake, step)) or (self.poll is not None and clock() >= looked + self.poll)
        except BaseException:
            if taken is not None:
                yield from self._give_back(taken)
            raise
        finally:
            self._wakes.discard(wake)
            board.remove(wake)

    def _give_back(self, claim: Any) -> Flow[None]:
        try:
            yield call("release", claim.task_id, token=claim.token)
            log.info("wait of %s cancelled after claiming %s: released", self.agent, claim.task_id)
        except ZmeshError as exc:
            log.warning("wait of %s cancelled after claiming %s; release failed (%s): it lapses with the "
                        "claim", self.agent, claim.task_id, exc)

    def _look(self, claim: bool, ttl: float | None) -> Flow[Work | None]:
        if self.assigned:
            msg = self.assigned.popleft()
            return Work("task", task_id=msg.task, claim=msg.claim, record=msg.context.get("task_record"),
                        assigned=True, message=msg)
        if self.messages and self.pushed:
            return Work("message", message=self.pushed.popleft())
        if claim:
            got = yield call("claim_next", ttl=ttl, capabilities=self.capabilities)
            if got is None:
                return None
            return Work("task", task_id=got.task_id, claim=got, record=got.task)
        # the broker names it: the claim order is its alone (None: the registered capabilities)
        task = yield call("next_task", capabilities=self.capabilities)
        return None if task is None else Work("task", task_id=task["id"], record=task)


class WorkWaiter(_WorkCore):
    """Waits for work for the client's agent, as often as asked (see the module docstring)."""

    def __init__(self, client: Client, *, capabilities: Iterable[str] | None = None, messages: bool = True,
                 listen: bool = True, poll: float | None = FALLBACK_POLL_S) -> None:
        check_client(client, Client, "WorkWaiter")
        super().__init__(client, capabilities, messages, listen, poll, sync_site(client))

    def wait(self, timeout: float | None, *, claim: bool = True, ttl: float | None = None,
             report_idle: bool = True, progress: Callable[[float, float | None], Any] | None = None,
             progress_every: float = PROGRESS_EVERY_S) -> Work:
        """Wait up to ``timeout`` seconds (None: until work comes) -> :class:`Work`.
        ``ttl``: the claim's own TTL (None: it lives with the lease). ``progress(elapsed,
        timeout)`` is called every ``progress_every`` seconds while it waits."""
        return run(self.client, self._site, self._wait(timeout, claim, ttl, report_idle, progress, progress_every))

    def __enter__(self) -> "WorkWaiter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncWorkWaiter(_WorkCore):
    """:class:`WorkWaiter` for an AsyncClient (``progress`` may be a coroutine function)."""

    def __init__(self, client: AsyncClient, *, capabilities: Iterable[str] | None = None, messages: bool = True,
                 listen: bool = True, poll: float | None = FALLBACK_POLL_S) -> None:
        check_client(client, AsyncClient, "AsyncWorkWaiter")
        super().__init__(client, capabilities, messages, listen, poll, async_site(client))

    async def wait(self, timeout: float | None, *, claim: bool = True, ttl: float | None = None,
                   report_idle: bool = True, progress: Callable[[float, float | None], Any] | None = None,
                   progress_every: float = PROGRESS_EVERY_S) -> Work:
        return await arun(self.client, self._site,
                          self._wait(timeout, claim, ttl, report_idle, progress, progress_every))

    async def __aenter__(self) -> "AsyncWorkWaiter":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


def wait_for_work(client: Client, timeout: float | None, *, claim: bool = True, ttl: float | None = None,
                  capabilities: Iterable[str] | None = None, messages: bool = True, report_idle: bool = True,
                  poll: float | None = FALLBACK_POLL_S) -> Work:
    """One wait with a :class:`WorkWaiter` made for it (``zmesh wait``)."""
    with WorkWaiter(client, capabilities=capabilities, messages=messages, poll=poll) as waiter:
        return waiter.wait(timeout, claim=claim, ttl=ttl, report_idle=report_idle)
