"""The outbox: what a transaction produced (replies, pushes, events) waits here until the
store says it is durable, then leaves in order.

Rules it keeps:

* Nothing leaves before ``store.durable()`` covers its transaction's journal seq: a reply,
  a push or an event never tells of a write the journal (or, with an etcd store, the
  cluster) does not have. A read's reply waits too: it may tell of writes not yet durable.
* Outputs leave in transaction order; within one, pushes first (a push is someone's
  latency, a reply only its sender's), then replies, then events.
* The flush is done in the loop when nothing else waits (a lone request pays no thread
  hand-over), or handed to the store's thread while requests wait (one flush covers several
  batches). Urgent outputs are never handed over while low work is deferred (lanes.py).
* A push the transport refuses goes back to the core as pending, in a transaction of its own.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING

import zmq

from .. import protocol
from ..core import Core, Now, Push
from ..protocol import Event
from ..store import Store
from ..transport.sockets import EVENTS, NOBLOCK, POLLIN, get_option as _get, send_frames
from ..util.logs import RateLimited
from .log import log_expiries
from .metrics import SLOW_COMMIT_S, BrokerStats

if TYPE_CHECKING:
    from .apply import Item
    from .lanes import Lanes

log = logging.getLogger("zmesh.broker")
_limited = RateLimited(log, interval=10.0)


class Out:
    """What one transaction produced, waiting for the journal seq ``need`` to be on disk."""

    __slots__ = ("need", "items", "replies", "events", "expired", "pushes", "answered", "started")

    def __init__(self, need: int, items: list[Item], replies: list[tuple[zmq.Socket, list[bytes]]],
                 events: list[Event], expired: list[Event], pushes: list[Push],
                 answered: list[tuple[Item, str]], started: float) -> None:
        self.need, self.items, self.replies, self.events = need, items, replies, events
        self.expired, self.pushes, self.answered, self.started = expired, pushes, answered, started


class Outputs:
    """The Broker's sending half (mixed into broker/loop.py's Broker, which owns the state)."""

    store: Store
    core: Core
    stats: BrokerStats
    latency: dict[str, deque[float]]
    batches: int
    requests: int
    _outbox: deque[Out]
    _flushed: bool
    _flush_pending: bool
    _urgent_need: int
    _lanes: Lanes
    _routers: list[zmq.Socket]
    _pub: zmq.Socket | None
    _seq: int
    _next_hb: float

    def _wake(self) -> None:
        raise NotImplementedError

    def _now(self) -> Now:
        raise NotImplementedError

    def _on_durable(self) -> None:
        """From the store's flush thread: the disk has more of the journal."""
        self._flushed = True
        self._wake()

    def _settle(self) -> None:
        """Send what the journal now covers. The flush is done here when the loop has
        nothing else to read (a lone request pays no thread hand-over), or asked of the
        store's thread when requests wait: the loop applies them while the disk flushes,
        and one flush then covers several batches (group commit across passes). Urgent
        outputs are flushed here, not handed over, while low work is deferred: the next
        passes would apply it and the flush thread would wait for the GIL behind them."""
        if self._flushed:
            self._flushed = self._flush_pending = False
        if not self._outbox:
            return
        durable = self.store.durable()
        if self._outbox[-1].need > durable:
            # urgent outputs never wait for a hand-over while low work is queued for the
            # next passes: the flush thread would need the GIL back from those passes
            if self._input_waiting() and not (self._lanes and self._urgent_need > durable):
                if not self._flush_pending:
                    self._flush_pending = True
                    self.store.sync_soon()
            else:
                durable = self.store.sync()
        self._send_covered(durable)

    def _input_waiting(self) -> bool:
        return bool(self._lanes) or any(int(_get(r, EVENTS)) & POLLIN for r in self._routers)

    def _flush_all(self) -> None:
        """Every output sent, after one flush (a stop)."""
        if self._outbox:
            self._send_covered(self.store.sync())

    def _send_covered(self, durable: int) -> None:
        """The outbox's outputs, in order, as far as the journal seq ``durable`` covers them."""
        while self._outbox and self._outbox[0].need <= durable:
            self._emit(self._outbox.popleft())

    def _emit(self, out: Out) -> None:
        items, events, answered = out.items, out.events, out.answered
        if out.pushes:  # first: a push is someone's latency, a reply only its sender's
            self._push(out.pushes)
        for router, frames in out.replies:
            self._send(router, frames)
        for event in events:
            self._publish(event)
        self.batches += 1
        self.requests += len(items)
        sent = time.monotonic()
        elapsed = sent - out.started
        self.stats.replied(items, sent)
        if answered:
            self.stats.answered(answered, sent)
        self.stats.committed(len(items), elapsed, events)
        if elapsed > SLOW_COMMIT_S:
            _limited.warning("slow", "slow commit: %d request(s) took %.0f ms to apply, commit and sync "
                             "(durability %s; the disk or the machine is busy)", len(items),
                             elapsed * 1000, self.store.durability,
                             extra={"event": "commit.slow", "requests": len(items), "ms": round(elapsed * 1000, 1),
                                    "durability": self.store.durability})
        if out.expired:
            self.stats.expired(out.expired)
            log_expiries(out.expired)

    @staticmethod
    def _send(router: zmq.Socket, frames: list[bytes]) -> None:
        try:
            send_frames(router, frames, NOBLOCK)
        except zmq.ZMQError as exc:  # client gone (ROUTER_MANDATORY) or its queue full
            log.debug("reply dropped: %s", exc)

    def _push(self, pushes: list[Push]) -> None:
        """Send each push to its agent's connection; one the transport refuses (the
        connection is gone, or its queue is full) goes back to the core as pending."""
        router = self._routers[0]
        failed = []
        sent = time.time()
        for push in pushes:
            try:
                send_frames(router, [push.route, *protocol.encode_push(push.raw)], NOBLOCK)
            except zmq.ZMQError as exc:
                failed.append(push)
                _limited.log(logging.INFO, "push:" + push.agent, "push to agent %r failed (%s): it stays pending until "
                              "its client speaks again", push.agent, exc)
                continue
            if push.live:
                self.latency[push.priority].append(sent - push.ts)
        self.stats.pushed(pushes, failed)
        if failed:
            with self.store.write() as txn:
                self.core.undeliverable(self.core.batch(txn, self._now()), failed)

    def _publish(self, event: Event) -> None:
        send_frames(self._pub, protocol.encode_event(event))  # type: ignore[arg-type]
        if event.topic != protocol.HEARTBEAT_TOPIC:
            self._seq = event.seq
        self._next_hb = time.monotonic() + protocol.PUB_HEARTBEAT_S
