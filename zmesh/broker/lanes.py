"""Priority lanes: which of a pass's requests are applied now, and when deferred low work goes.

Rules it keeps (pure: no sockets, no store, no clock; ``now`` is passed in):

* **Lanes.** Only a message's ops (``send``, ``assign``) carry a priority; everything else
  (claims, heartbeats, acks...) goes in the lane of ``high`` messages. Inside a pass the
  urgent lanes are applied critical first, then high, then normal, in arrival order within a
  lane (a stable sort).
* **Low work waits** in memory while more urgent work keeps arriving. It goes when a pass
  brought nothing more urgent, or once its oldest request waited ``low_batch`` seconds, at
  most :data:`LOW_PER_PASS` a pass, in a transaction of its own (so a flood of low messages
  never sits in front of a claim). While low work waits, a pass reads at most
  :data:`LOW_DRAIN` requests: an urgent request that arrives behind a flood waits for the
  decoding of a few low ones and one small low transaction, no more (measured in the
  flood bench: 256 a pass held a claim 12-19 ms at p95, 16 a pass 2.8 ms; below 16 the
  claim gains little and low delivery slows).
* **A byte budget bounds the wait.** Beyond :data:`LOW_BACKLOG_BYTES` of deferred bodies, low
  work goes a full batch per pass (10,000 small low messages behind urgent work are the lanes
  doing their job; 64 MiB of them are memory the broker must give back).
* Oldest first, always: nothing deferred is reordered or dropped; a stop drains it
  (:meth:`Lanes.take`).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Generic, Protocol, Sequence, TypeVar

from ..protocol import PRIORITIES

#: the ops whose body carries a ``priority`` (the rest go in the high lane)
LANE_OPS = frozenset({"send", "assign"})
#: priority name -> lane number, most urgent first
LANE: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}
MAIN_LANE = LANE["high"]
LOW_LANE = LANE["low"]
#: deferred low requests applied at most per pass (one transaction), unless the backlog is over budget
LOW_PER_PASS = 16
#: requests a pass reads at most while low work is deferred: a claim behind a flood waits
#: for the decoding of this many, not of a full batch (the rest wait in the socket's queue)
LOW_DRAIN = 16
#: bytes of low work deferred in memory at most; beyond it low work goes a batch per pass
LOW_BACKLOG_BYTES = 64 << 20


def lane(op: str, body: dict[str, Any]) -> int:
    """The lane of a decoded request (its body validated, so a message has a priority)."""
    return LANE[body["priority"]] if op in LANE_OPS else MAIN_LANE


class Laned(Protocol):
    """What the lanes need of a request: its lane and its body's size."""

    lane: int
    body: bytes


T = TypeVar("T", bound=Laned)


def _lane_of(item: Laned) -> int:
    return item.lane


class Lanes(Generic[T]):
    """The deferred low requests of a broker, and the decisions about them."""

    def __init__(self, low_batch: float, max_batch: int) -> None:
        self.low_batch = low_batch  # seconds the oldest low request may wait behind urgent work
        self.max_batch = max_batch  # what one transaction takes when the backlog is over budget
        self._low: deque[tuple[T, float]] = deque()
        self.low_bytes = 0  # the body bytes of the deferred requests

    def __len__(self) -> int:
        return len(self._low)

    def split(self, items: Sequence[T], now: float) -> list[T]:
        """The urgent ``items`` in the order to apply them; the low ones are kept for later
        (``now``: when the pass read them)."""
        urgent = [item for item in items if item.lane < LOW_LANE]
        if len(urgent) != len(items):
            for item in items:
                if item.lane == LOW_LANE:
                    self._low.append((item, now))
                    self.low_bytes += len(item.body)
        if len(urgent) > 1:
            urgent.sort(key=_lane_of)  # stable: arrival order within a lane
        return urgent

    def due(self, urgent: bool, now: float) -> int:
        """How many deferred low requests to apply after a pass (``urgent``: it applied some
        urgent work): 0 while more urgent work keeps coming and the oldest waited less than
        ``low_batch``; a full batch while over :data:`LOW_BACKLOG_BYTES`."""
        if not self._low:
            return 0
        over = self.low_bytes > LOW_BACKLOG_BYTES
        if not urgent or now - self._low[0][1] >= self.low_batch or over:
            return min(self.max_batch if over else LOW_PER_PASS, len(self._low))
        return 0

    def take(self, most: int) -> list[T]:
        """Up to ``most`` deferred requests, oldest first, removed from the backlog."""
        batch = [self._low.popleft()[0] for _ in range(min(most, len(self._low)))]
        self.low_bytes -= sum(len(item.body) for item in batch)
        return batch
