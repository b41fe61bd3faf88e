"""What the recipes of one client know between calls, with no I/O: who waits for which task
events (:class:`Board`), what a task's claim is as far as events and reads have shown
(:class:`ClaimTracker`), and which recipe object holds which claim (:class:`Holds`).

Rules it keeps:

* One task-event subscription per client feeds the :class:`Board` (the drivers start it:
  ``_drive``). A waiter registers its :class:`Interest` *before* it tries the broker, and
  clears it before each try. So an event of a change after the try always wakes it, and a
  wake-up with nothing to do costs one more try, never a missed change.
* A tracker never goes back in time. Fencing tokens only increase, so a claim's state is
  ordered by (token, ended): a claim with token T is newer than any state with a smaller
  token, and its end is newer than the claim. A late or replayed event, or a read older
  than an event already seen, changes nothing.
* The broker answers a claim by the agent that holds the task with the same claim. So two
  recipe objects of one client (one agent) would both believe they hold it. :class:`Holds`
  tells them apart: a claim answered with the token another object of this client holds is
  that object's, not a new one.
* Nothing here decides that a claim expired. Only the broker's events and replies say so.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

log = logging.getLogger("zmesh.recipes")

#: the subscription's topic prefix: every task event
TASK_TOPICS = ("task.",)
#: events that end a claim: the task is free again (or gone)
ENDED = frozenset({"task.released", "task.completed", "task.failed", "task.dead", "task.purged"})


class Signal(Protocol):
    """threading.Event (Client) or asyncio.Event (AsyncClient)."""

    def set(self) -> None: ...
    def clear(self) -> None: ...
    def is_set(self) -> bool: ...


class Interest:
    """One waiter's (or observer's) wish to hear of events: of some task ids (None: all), of
    some topics (None: all). ``hits`` collects the task ids that fired since the last
    :meth:`reset`; ``on_event`` (an observer's) is called with each matching event."""

    __slots__ = ("ids", "topics", "on_event", "signal", "hits")

    def __init__(self, signal: Signal, ids: Iterable[str] | None = None, topics: Iterable[str] | None = None,
                 on_event: Callable[[Any], object] | None = None) -> None:
        self.signal = signal
        self.ids = None if ids is None else frozenset(ids)
        self.topics = None if topics is None else frozenset(topics)
        self.on_event = on_event
        self.hits: set[str] = set()

    def wants(self, topic: str, task_id: Any) -> bool:
        return (self.ids is None or task_id in self.ids) and (self.topics is None or topic in self.topics)

    def fire(self, task_id: str | None = None) -> None:
        if task_id is not None:
            self.hits.add(task_id)
        self.signal.set()

    def reset(self) -> set[str]:
        """Clear the wake-up (first, so a hit that comes meanwhile fires again) and return
        the task ids that fired since the last reset."""
        self.signal.clear()
        hits, self.hits = self.hits, set()
        return hits


class Board:
    """The interests of one client's recipes, fed by its task-event subscription."""

    def __init__(self, make_signal: Callable[[], Signal]) -> None:
        self.make_signal = make_signal
        self._lock = threading.Lock()
        self._interests: list[Interest] = []

    def interest(self, ids: Iterable[str] | None = None, topics: Iterable[str] | None = None,
                 on_event: Callable[[Any], object] | None = None) -> Interest:
        got = Interest(self.make_signal(), ids, topics, on_event)
        with self._lock:
            self._interests.append(got)
        return got

    def remove(self, interest: Interest | None) -> None:
        if interest is None:
            return
        with self._lock:
            if interest in self._interests:
                self._interests.remove(interest)

    def __len__(self) -> int:
        return len(self._interests)

    def deliver(self, event: Any) -> None:
        """One event from the subscription: observers first (a tracker is current before a
        waiter it wakes reads it), then the wake-ups."""
        body = event.body if isinstance(event.body, dict) else {}
        task_id = body.get("task_id")
        with self._lock:
            hits = [i for i in self._interests if i.wants(event.topic, task_id)]
        for interest in hits:
            if interest.on_event is not None:
                try:
                    interest.on_event(event)
                except Exception:  # an observer's bug must not stop the others
                    log.exception("recipe observer failed on %s", event.topic)
            interest.fire(task_id if isinstance(task_id, str) else None)


@dataclass(frozen=True)
class Holder:
    """Who holds a recipe's task now: the agent and its claim's fencing token (a larger
    token means a later holder)."""

    agent: str
    token: int


class ClaimTracker:
    """One task's claim as far as events and reads have shown, ordered by fencing token
    (module rules). Thread-safe: the subscription feeds it while its owner reads it."""

    def __init__(self, task_id: str, on_change: Callable[[Holder | None], None] | None = None) -> None:
        self.task_id = task_id
        self.on_change = on_change
        self._version: tuple[int, int] = (0, 1)  # (token, 1 when ended): nothing held yet
        self._holder: Holder | None = None
        #: has on_change been told anything yet (an observer hears the current state first)
        self.told = False
        self._lock = threading.RLock()

    @property
    def current(self) -> Holder | None:
        return self._holder

    def holds(self, token: int | None) -> bool:
        holder = self._holder
        return token is not None and holder is not None and holder.token == token

    def saw(self, agent: str | None, token: int, ended: bool) -> bool:
        """One observation; True when it changed the state (then on_change is told)."""
        with self._lock:
            version = (token, 1 if ended else 0)
            if version <= self._version:
                return False
            self._version = version
            holder = None if ended or agent is None else Holder(agent, token)
            changed = holder != self._holder
            self._holder = holder
            if changed:
                self.tell()
            return changed

    def tell(self) -> None:
        """Tell on_change the current state (under the lock: observers hear changes in order)."""
        with self._lock:
            self.told = True
            if self.on_change is not None:
                try:
                    self.on_change(self._holder)
                except Exception:
                    log.exception("recipe callback failed for %s", self.task_id)

    def announce(self) -> None:
        """Tell on_change the current state unless it was told something already."""
        with self._lock:
            if not self.told:
                self.tell()

    def apply(self, event: Any) -> bool:
        body = event.body if isinstance(event.body, dict) else {}
        if body.get("task_id") != self.task_id:
            return False
        topic = event.topic
        if topic == "task.purged":
            return self.saw(None, self._version[0], True)
        token = body.get("token")
        if not isinstance(token, int):
            return False
        if topic == "task.claimed":
            return self.saw(body.get("claimed_by"), token, False)
        if topic == "task.released":
            return self.saw(body.get("agent"), token, True)
        if topic in ENDED:
            return self.saw(body.get("claimed_by"), token, True)
        return False

    def seed(self, record: dict[str, Any] | None) -> bool:
        """A read of the task (None: it does not exist)."""
        if record is None:
            return False
        if record.get("status") == "claimed" and isinstance(record.get("token"), int) and record.get("owner"):
            return self.saw(record["owner"], record["token"], False)
        ended = [e.get("token") for e in record.get("history") or () if isinstance(e, dict)]
        ended.append(record.get("completed_token"))
        last = max((t for t in ended if isinstance(t, int)), default=0)
        return self.saw(None, last, True) if last else False


class Holds:
    """Which recipe object of one client holds which task claim (module rules)."""

    _keys = itertools.count(1)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, tuple[int, int]] = {}

    @classmethod
    def key(cls) -> int:
        """A key for one recipe object (never reused, unlike id())."""
        return next(cls._keys)

    def took(self, task_id: str, token: int, holder: int) -> bool:
        """The broker answered ``holder``'s claim on ``task_id`` with ``token``: True if the
        claim is holder's (new, or its own again), False if another object of this client
        holds that very claim."""
        with self._lock:
            current = self._held.get(task_id)
            if current is not None and current[0] == token and current[1] != holder:
                return False
            self._held[task_id] = (token, holder)
            return True

    def dropped(self, task_id: str, token: int | None) -> None:
        with self._lock:
            current = self._held.get(task_id)
            if current is not None and current[0] == token:
                del self._held[task_id]
