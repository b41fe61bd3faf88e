"""The one claim machinery of the recipes: holding one of a fixed set of tasks. A lock is a
set of one, a semaphore a set of N, a leadership a set of one, a barrier N places. Here a
recipe task is made, claimed, watched, released and checked.

Rules it keeps:

* A hold is a claim of a task, nothing more. The broker grants it (one winner of any number
  of racers), gives it a fencing token, ties it to the agent's lease and ends it when the
  lease lapses. No timer here decides that a hold is over: ``is_acquired`` turns False when
  the broker's events say that the claim ended, and :meth:`SlotSet.check_flow` asks the
  broker directly.
* Claims are taken without a TTL of their own, unless a recipe is given one: a hold lasts
  as long as the agent's lease, which the client's heartbeat keeps alive. An agent that
  dies, stops heartbeating or is cut off from the broker loses its holds within its lease
  TTL. The broker then publishes ``task.released`` (reason ``lease_expired``), and that
  event wakes the waiters.
* A waiter registers for the events of its tasks first, then tries every task, then waits
  until an event frees one, or the fallback ``poll`` passes, or its timeout ends. Woken by
  an event, it tries first the tasks that were freed. It never polls in a loop.
* A recipe task is created by whoever needs it first (``task_create``: one creator wins,
  the others read it). It requires RECIPE_CAPABILITY, so ``claim_next`` never hands it out
  as work. A task of that id that is not the recipe's kind is a Conflict, never used.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

from zmesh import (BadRequest, ClaimExpired, Conflict, InvalidArgument, LeaseExpired, NotFound, NotOwner,
                   StaleToken, TooLarge, ZmeshError)

from ._drive import Site
from ._flow import RECIPE_CAPABILITY, Checkpoint, Deadline, Flow, Wait, call, watch
from ._watch import Board, ClaimTracker, Holder, Holds, Interest

log = logging.getLogger("zmesh.recipes")

#: events after which a recipe task may be claimable again
FREED = ("task.released", "task.failed", "task.requeued", "task.available", "task.created")
#: refusals of release/renew that mean the claim had already ended (or was replaced)
GONE = (NotOwner, StaleToken, LeaseExpired, ClaimExpired, NotFound)


def recipe_task(type: str, data: dict[str, Any]) -> dict[str, Any]:
    """task_create's keyword arguments for a recipe task."""
    return {"type": type, "data": data, "requires": [RECIPE_CAPABILITY]}


def ensure_task(task_id: str, type: str, data: dict[str, Any], field: str = "name") -> Flow[dict[str, Any]]:
    """The recipe task ``task_id``: read, or created when it is missing (module rules)."""
    try:
        try:
            record = yield call("task", task_id)
        except NotFound:
            try:
                record = yield call("create_task", task_id, **recipe_task(type, data))
            except Conflict as exc:
                if exc.details.get("reason") != "exists":
                    raise
                record = yield call("task", task_id)
    except (BadRequest, TooLarge) as exc:
        if exc.details.get("field") not in ("id", "task"):
            raise
        raise InvalidArgument(f"{field} makes a task id the broker refuses: {exc.message}",
                              {"field": field}) from exc
    if record.get("type") != type:
        raise Conflict(f"task '{task_id}' exists and is not a {type} (its type is {record.get('type')!r}); "
                       f"pick another {field}", {"task": task_id, "type": record.get("type"), "field": field})
    return record  # type: ignore[no-any-return]


def holders_of(ids: Iterable[str], prefix: str) -> Flow[dict[str, Holder]]:
    """Who holds which of ``ids`` (all starting with ``prefix``), from the claimed tasks in id
    order: usually one read, at one moment."""
    wanted = set(ids)
    found: dict[str, Holder] = {}
    after = prefix
    while True:
        page = yield call("task_page", status="claimed", after=after, limit=min(1000, len(wanted) + 1))
        tasks = page["tasks"]
        for task in tasks:
            if not task["id"].startswith(prefix):
                return found
            if task["id"] in wanted and task.get("owner") and isinstance(task.get("token"), int):
                found[task["id"]] = Holder(task["owner"], task["token"])
        if not page["more"] or not tasks:
            return found
        after = tasks[-1]["id"]


class SlotSet:
    """One recipe object's hold on one of ``ids`` (module rules)."""

    def __init__(self, site: Site, agent: str, ids: Iterable[str], *,
                 make: Callable[[str], dict[str, Any]] | None, poll: float, ttl: float | None = None) -> None:
        self.site = site
        self.agent = agent
        self.ids = list(ids)
        self.make = make
        self.poll = poll
        self.ttl = ttl
        self.key = Holds.key()
        #: the claim held (None: none), and what the events say of it
        self.claim: Any = None
        self.tracker: ClaimTracker | None = None
        self._watching: Interest | None = None
        self._board: Board | None = None

    @property
    def token(self) -> int | None:
        return None if self.claim is None else int(self.claim.token)

    @property
    def task_id(self) -> str | None:
        return None if self.claim is None else str(self.claim.task_id)

    @property
    def is_acquired(self) -> bool:
        """True from a successful acquire until release, or until the broker's events say
        the claim ended (lease lapsed, released by an admin)."""
        return self.claim is not None and self.tracker is not None and self.tracker.holds(self.claim.token)

    # ------------------------------------------------------------ flows
    def claim_one(self, task_id: str) -> Flow[Any]:
        """Claim ``task_id`` for this object -> the Claim, or None when another agent (or
        another object of this client) holds it."""
        try:
            got = yield call("claim", task_id, ttl=self.ttl)
        except NotFound:
            if self.make is None:
                raise
            try:
                yield call("create_task", task_id, **self.make(task_id))
            except Conflict as exc:
                if exc.details.get("reason") != "exists":
                    raise
            got = yield call("claim", task_id, ttl=self.ttl)
        except Conflict as exc:
            if exc.details.get("status") == "waiting":  # its dependencies are not done yet
                return None
            raise
        if got is None or not self.site.holds.took(task_id, got.token, self.key):
            return None
        return got

    def took(self, board: Board, claim: Any) -> None:
        self.claim = claim
        self.tracker = ClaimTracker(claim.task_id)
        self.tracker.saw(self.agent, claim.token, False)
        self._board = board
        self._watching = board.interest(ids=[claim.task_id], on_event=self.tracker.apply)

    def forget(self) -> None:
        if self.claim is not None:
            self.site.holds.dropped(self.claim.task_id, self.claim.token)
        if self._board is not None:
            self._board.remove(self._watching)
        self.claim, self.tracker, self._watching = None, None, None

    def try_flow(self, board: Board, order: Iterable[str]) -> Flow[bool]:
        """One pass over ``order``; True once one is held."""
        for task_id in order:
            got = yield from self.claim_one(task_id)
            if got is not None:
                self.took(board, got)
                return True
        return False

    def acquire_flow(self, blocking: bool, timeout: float | None, clock: Callable[[], float]) -> Flow[bool]:
        if self.claim is not None:
            if self.is_acquired:
                return True  # held already: the broker would answer a re-claim with this claim
            self.forget()  # the broker said it ended: take one again
        board = yield from watch()
        waiting = board.interest(ids=self.ids, topics=FREED)
        deadline = Deadline(clock, timeout)
        woke = False
        try:
            while True:
                hits = waiting.reset()
                order = [i for i in self.ids if i in hits] if woke and hits else self.ids
                if (yield from self.try_flow(board, order)):
                    try:
                        yield Checkpoint()
                    except BaseException:
                        yield from self.give_back()
                        raise
                    return True
                if not blocking or deadline.passed():
                    return False
                woke = yield Wait(waiting, deadline.step(self.poll))
        finally:
            board.remove(waiting)

    def give_back(self) -> Flow[None]:
        """Release what was taken for a caller that gave up; a failure is left to the lease."""
        claim = self.claim
        try:
            yield call("release", claim.task_id, token=claim.token)
        except ZmeshError as exc:
            log.warning("could not give back %s (token %s): %s; it lapses with the lease",
                        claim.task_id, claim.token, exc)
        finally:
            self.forget()

    def release_flow(self) -> Flow[bool]:
        """True if this released the claim; False if none was held or it had ended already.
        Unreachable is raised and the hold kept, so release() may be called again."""
        claim = self.claim
        if claim is None:
            return False
        try:
            yield call("release", claim.task_id, token=claim.token)
        except GONE as exc:
            log.info("%s (token %s) had ended before its release: %s", claim.task_id, claim.token, exc.code)
            self.forget()
            return False
        self.forget()
        return True

    def exit_flow(self, exc: BaseException | None) -> Flow[None]:
        """A ``with`` block ends: release. When the block raised, a failed release is logged
        (the claim lapses with the lease), so it does not hide the block's exception."""
        try:
            yield from self.release_flow()
        except ZmeshError as err:
            if exc is None:
                raise
            log.warning("could not release %s after %s: %s; it lapses with the lease", self.task_id,
                        type(exc).__name__, err)
            self.forget()

    def check_flow(self) -> Flow[bool]:
        """Ask the broker: is this object's claim still the task's current one?"""
        claim = self.claim
        if claim is None:
            return False
        try:
            record = yield call("task", claim.task_id)
        except NotFound:
            record = None
        if self.tracker is not None:
            self.tracker.seed(record)
        return record is not None and record.get("owner") == self.agent and record.get("token") == claim.token
