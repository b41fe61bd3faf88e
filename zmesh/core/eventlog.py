"""The event log and the store-wide counters.

Rules it keeps:

* Every change appends an event with the next sequence number, in the same transaction as
  the change: the log is gap-free and never holds an event of a rolled-back batch.
* The log keeps the newest ``event_log_size`` events; each append drops exactly the one
  that fell out (the log is gap-free and :meth:`EventLog.trim` cut it to size at start),
  so there is no cursor walk per event.
* Counters (``seq``, ``token``, ``order``, ``count:<status>``) only move through
  :func:`bump`/:func:`set_counter`; values read in a batch are cached on the batch, which
  lives as long as its transaction (context.Batch), and a changed counter is stored once,
  just before the transaction commits (:func:`store_counters`; a rolled-back batch stores
  none). Inside a batch, read counters with :func:`counter`, never from the transaction.
* A replay never answers across a gap: ``since`` older than the log's start is
  ``snapshot_required``, ``since`` ahead of the last seq is ``bad_request``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import BadRequest, SnapshotRequired
from ..protocol import Event
from .context import Batch, Settings
from .schema import COUNTER, U64, dumps, event_record, is_counter, loads, parse_seq, seq_key

if TYPE_CHECKING:
    from ..store.base import Txn


def read_counter(txn: Txn, name: bytes) -> int:
    """A counter's stored value, outside any batch (a read transaction)."""
    raw = txn.get("events", COUNTER + name)
    return U64.unpack(raw)[0] if raw else 0


# counter / set_counter / bump run several times per claim: written flat (no helper calls)
def counter(b: Batch, name: bytes) -> int:
    value = b.counters.get(name)
    if value is None:
        raw = b.txn.get("events", COUNTER + name)
        value = b.counters[name] = U64.unpack(raw)[0] if raw else 0
    return value


def set_counter(b: Batch, name: bytes, value: int) -> None:
    if not b.written:
        b.txn.before_commit(lambda: store_counters(b))
    b.counters[name] = value
    b.written.add(name)


def bump(b: Batch, name: bytes, delta: int = 1) -> int:
    """Add ``delta`` to a counter; returns the new value (``bump(b, b"token")`` is the
    next fencing token)."""
    value = b.counters.get(name)
    if value is None:
        raw = b.txn.get("events", COUNTER + name)
        value = U64.unpack(raw)[0] if raw else 0
    value += delta
    b.counters[name] = value
    if not b.written:
        b.txn.before_commit(lambda: store_counters(b))
    b.written.add(name)
    return value


def store_counters(b: Batch) -> None:
    """Write every counter the batch changed (the transaction is about to commit)."""
    put, counters = b.txn.put, b.counters
    for name in b.written:
        put("events", COUNTER + name, U64.pack(counters[name]))
    b.written.clear()


def all_counters(txn: Txn) -> dict[str, int]:
    return {bytes(k)[1:].decode(): U64.unpack(v)[0] for k, v in txn.scan("events", prefix=COUNTER)}


class EventLog:
    """Appends, trims and replays the persisted log."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings  # read at each use: event_log_size may be set after start

    @property
    def size(self) -> int:
        return self.settings.event_log_size

    def emit(self, b: Batch, topic: str, body: dict[str, Any]) -> Event:
        body["ts"] = b.now.wall
        seq = bump(b, b"seq")
        raw = dumps(body)  # encoded once: for the log here and for PUB by the broker
        b.txn.put("events", seq_key(seq), event_record(topic, raw))
        floor = seq - self.size
        if floor > 0:
            b.txn.delete("events", seq_key(floor))
        event = Event(topic, seq, body, raw)
        b.events.append(event)
        return event

    def trim(self, b: Batch) -> int:
        """Drop every event at or below the floor (after a start with a smaller
        event_log_size the log may hold more than emit's one-key trim removes); returns
        how many."""
        floor = seq_key(max(0, counter(b, b"seq") - self.size))
        doomed = []
        for key, _ in b.txn.scan("events"):
            if key > floor or is_counter(key):
                break
            doomed.append(bytes(key))
        for key in doomed:
            b.txn.delete("events", key)
        return len(doomed)

    def replay(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        since, limit, topics = body["since"], body["limit"], tuple(body["topics"])
        txn = b.txn
        last = counter(b, b"seq")
        first = next(txn.scan("events"), None)
        oldest = parse_seq(first[0]) if first and not is_counter(first[0]) else last + 1
        if since > last:  # a mistake, or a subscriber that followed another (or a restored) broker
            raise BadRequest(f"since {since} is ahead of the broker's last event {last}",
                             {"field": "since", "since": since, "last_seq": last})
        if since + 1 < oldest and since < last:
            raise SnapshotRequired(
                f"events after {since} were trimmed; the log starts at {oldest}",
                {"since": since, "oldest": oldest, "last_seq": last})
        events: list[dict[str, Any]] = []
        more = False
        for key, raw in txn.scan("events", start=seq_key(since + 1)):
            if is_counter(key):
                break
            topic, ebody = loads(raw)
            if topics and not topic.startswith(topics):
                continue
            if len(events) == limit:
                more = True
                break
            events.append({"topic": topic, "seq": parse_seq(key), "body": ebody})
        return {"events": events, "last_seq": last, "more": more}
