"""Volatile deadlines: when each lease and each claim with its own TTL lapses, and when a
silent agent turns evasive.

Rules it keeps:

* Deadlines live in memory only, on the broker's monotonic clock: heartbeats and renewals
  write nothing to disk. After a start every lease and claim gets its full TTL again
  (Core.recover), so downtime never causes a mass expiry.
* At most one heap entry per (kind, key): extending a deadline pushes nothing (the old
  entry, when it comes due, is queued again at the real deadline), so the heap stays as
  small as the number of leases and claims however often agents heartbeat.
* :meth:`Deadlines.due` yields in deadline order and only entries whose deadline really
  passed; the caller ends them and :meth:`drop` s them before setting them again (a
  deadline that is present always has a heap entry at or before it: moving it later is a
  plain store, the common case of every heartbeat and request).
"""

from __future__ import annotations

import heapq
from enum import IntEnum
from typing import Iterator, Union

Key = Union[str, bytes, int]


class Due(IntEnum):
    """What a deadline ends."""

    LEASE = 0  #: an agent's lease (key: agent id)
    CLAIM = 1  #: a claim's own TTL (key: resource key)
    EVASIVE = 2  #: an agent missed a heartbeat period (key: agent id); ends nothing
    WAIT = 3  #: a request waiting in a queue gives up (key: its wait number)


class Deadlines:
    """Leases and claim TTLs, with a heap ordered by deadline."""

    def __init__(self) -> None:
        self.at: dict[Due, dict[Key, float]] = {due: {} for due in Due}
        self.lease: dict[str, float] = self.at[Due.LEASE]  # type: ignore[assignment]
        self.claim: dict[bytes, float] = self.at[Due.CLAIM]  # type: ignore[assignment]
        self.evasive: dict[str, float] = self.at[Due.EVASIVE]  # type: ignore[assignment]
        self._heap: list[tuple[float, Due, Key]] = []
        self._queued: dict[tuple[Due, Key], float] = {}  # the live heap entry per key

    def clear(self) -> None:
        for table in self.at.values():
            table.clear()
        self._heap.clear()
        self._queued.clear()

    def set(self, due: Due, key: Key, ttl: float, now: float) -> float:
        deadline = now + ttl
        table = self.at[due]
        old = table.get(key)
        table[key] = deadline
        if old is not None and deadline >= old:
            return deadline  # moved later: its queued entry (at or before ``old``) stands
        queued = self._queued.get((due, key))
        if queued is None or deadline < queued:
            self._queued[(due, key)] = deadline
            heapq.heappush(self._heap, (deadline, due, key))
        return deadline

    def extend(self, due: Due, key: Key, ttl: float, now: float) -> None:
        """Set the deadline to ``now + ttl`` unless it is already later."""
        if now + ttl > self.at[due].get(key, 0.0):
            self.set(due, key, ttl, now)

    def drop(self, due: Due, key: Key) -> None:
        self.at[due].pop(key, None)

    def remaining(self, due: Due, key: Key, now: float) -> float | None:
        deadline = self.at[due].get(key)
        return None if deadline is None else max(0.0, deadline - now)

    def any_due(self, now: float) -> bool:
        """Is the earliest heap entry (live or superseded) at or before ``now``?"""
        return bool(self._heap) and self._heap[0][0] <= now

    def due(self, now: float) -> Iterator[tuple[Due, Key]]:
        """Every (kind, key) whose deadline is at or before ``now``, earliest first. The
        caller ends each one before asking for the next."""
        heap, queued = self._heap, self._queued
        while heap and heap[0][0] <= now:
            at, due, key = heapq.heappop(heap)
            if queued.get((due, key)) != at:
                continue  # superseded by an earlier entry for the same key
            del queued[(due, key)]
            live = self.at[due].get(key)
            if live is None:
                continue
            if live != at:  # extended since it was queued: queue it at its real deadline
                queued[(due, key)] = live
                heapq.heappush(heap, (live, due, key))
                continue
            yield due, key

    def next(self) -> float | None:
        """The earliest queued deadline (an extended one is queued again then, so this may
        be early, never late)."""
        heap, queued = self._heap, self._queued
        while heap:
            at, due, key = heap[0]
            if queued.get((due, key)) == at:
                return at
            heapq.heappop(heap)
        return None

    def queued(self) -> int:
        """Heap entries (live and superseded): what the heap costs in memory."""
        return len(self._heap)
