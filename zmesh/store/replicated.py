"""A store replicated through the mesh's log on etcd (etcd_log.py): this broker's LMDB is one
full replica, and a write counts only when etcd has its record.

Rules it keeps:

* The local store (lmdb.py) applies and journals each batch as always. Its journal record
  (the redo record, at the same seq) is then appended to the etcd log by the replicator
  thread, all the records that queued meanwhile in one append (group commit across
  batches).
* :meth:`ReplicatedStore.durable` is the seq etcd has (and at ``full`` the local journal's
  fdatasync too): the broker's outbox sends no reply, push or event before it, so nothing is
  acknowledged that etcd did not take.
* Only the active broker writes. It holds the leader key (``EtcdLog.campaign``) and refreshes
  its lease every third of the TTL. A refresh that finds the lease gone, etcd out of reach
  for longer than the TTL, or an append etcd refuses (``Deposed``) **breaks** the store: every
  later write and flush raises StoreError naming why, and :attr:`broken` says so, so the
  broker stops. Replies to the batches etcd did not take are never sent.
* On open, the replica is brought to the log's head (``LmdbStore.apply_records``) before
  the campaign, and again after it is won. A replica ahead of the log holds writes the
  cluster never took (its broker was deposed with batches in flight): it is refused, with
  what to do.
* Once bound, the broker's endpoints are put in the leader key (:meth:`ReplicatedStore.advertise`),
  guarded by the epoch, so whoever reads the key can name the active broker.
* Another broker active: refused at open, naming it. Standby brokers that follow the log and
  take over come next (docs/CLUSTER.md).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, ContextManager, Sequence

import orjson

from ..errors import StoreError
from .base import Txn
from .etcd_kv import EtcdError, EtcdKV, EtcdUnavailable
from .etcd_log import Deposed, EtcdLog, Head
from .lmdb import LmdbStore

log = logging.getLogger(__name__)

#: entries applied per local transaction while catching up with the log
CATCH_UP_BATCH = 1024


class ReplicatedStore:
    """The Store of a broker of a mesh on etcd (``zmesh broker --store etcd://...``)."""

    def __init__(self, path: str | os.PathLike[str], *, endpoints: Sequence[tuple[str, int]], mesh: str,
                 durability: str = "full", leader_ttl: int = 5, timeout: float = 2.0,
                 map_size: int = 1 << 33) -> None:
        if isinstance(leader_ttl, bool) or not isinstance(leader_ttl, int) or not 2 <= leader_ttl <= 60:
            raise StoreError(f"leader_ttl must be a whole number of seconds in 2..60, not {leader_ttl!r}")
        self.local = LmdbStore(path, durability=durability, map_size=map_size)
        self.durability = durability
        self.broker_id = self.local.broker_id
        self.mesh, self.leader_ttl = mesh, leader_ttl
        self._broken: str | None = None
        self._lock = threading.Condition()
        self._queue: list[tuple[int, bytes]] = []
        self._on_durable: Callable[[], None] | None = None
        self._stopping = False
        self.kv: EtcdKV | None = None
        try:
            self.kv = EtcdKV(endpoints, timeout)
            self.log = EtcdLog(self.kv, mesh)
            caught_up = self._catch_up()
            ident = orjson.dumps({"broker_id": self.broker_id, "pid": os.getpid()})
            term = self.log.campaign(ident, leader_ttl)
            if term is None:
                found = self.log.leader()
                who = orjson.loads(found[1]).get("broker_id", "?") if found else "?"
                raise StoreError(f"another broker ({who}) is active for mesh {mesh!r} on etcd; this zmesh runs one "
                                 "broker per mesh (standby brokers come in a later version)")
            self.term = term
            caught_up += self._catch_up()  # what was appended between the first catch-up and the win
        except EtcdError as exc:
            self._close_quietly()
            raise StoreError(f"etcd at {_names(endpoints)}: {exc.message}") from None
        except BaseException:
            self._close_quietly()
            raise
        self.head = self.log.head()
        self.acked = self.head.seq
        self.recovery: dict[str, Any] = {**self.local.recovery, "replicated": caught_up, "epoch": term.epoch,
                                         "log_head": self.head.seq}
        log.info("store: active for mesh %r on etcd (epoch %d, log at seq %d, %d entr%s applied from the log)",
                 mesh, term.epoch, self.head.seq, caught_up, "y" if caught_up == 1 else "ies",
                 extra={"event": "cluster.active", "mesh": mesh, "epoch": term.epoch, "seq": self.head.seq,
                        "replicated": caught_up})
        self.local.on_record = self._queue_record
        self._replicator = threading.Thread(target=self._replicate, name="zmesh-etcd-append", daemon=True)
        self._keeper = threading.Thread(target=self._keep, name="zmesh-etcd-lease", daemon=True)
        self._replicator.start()
        self._keeper.start()

    # ------------------------------------------------------------------ open
    def _catch_up(self) -> int:
        """Apply the log's entries past the local seq; how many. A replica ahead of the log is refused."""
        head = self.log.head()
        applied = self.local.applied
        if applied > head.seq:
            raise StoreError(
                f"the data in {self.local.path} is at seq {applied}, past the mesh's log on etcd (seq {head.seq}): "
                "it holds writes the cluster never took (this broker was deposed with batches in flight). Move "
                "the directory away and start again: the broker rebuilds it from the log")
        count = 0
        batch: list[tuple[int, bytes]] = []
        for entry in self.log.entries(applied, head):
            batch.append((entry.seq, entry.record))
            if len(batch) == CATCH_UP_BATCH:
                self.local.apply_records(batch)
                count += len(batch)
                batch = []
        if batch:
            self.local.apply_records(batch)
            count += len(batch)
        return count

    def _close_quietly(self) -> None:
        if self.kv is not None:
            self.kv.close()
        self.local.close()

    # ------------------------------------------------------------------ the write path
    def _queue_record(self, seq: int, payload: bytes) -> None:
        """From the local store's commit (the broker's thread): ship this record."""
        with self._lock:
            self._queue.append((seq, payload))
            self._lock.notify_all()

    def _replicate(self) -> None:
        """The replicator thread: append what queued, in order, until the store closes or breaks."""
        while True:
            with self._lock:
                while not self._queue and not self._stopping and self._broken is None:
                    self._lock.wait()
                if self._broken is not None or (self._stopping and not self._queue):
                    return
                records, self._queue = self._queue, []
            try:
                head = self._append(records)
            except StoreError as exc:
                self._break(exc.message)
                return
            with self._lock:
                self.head, self.acked = head, head.seq
                self._lock.notify_all()
            if self._on_durable is not None:
                self._on_durable()

    def _append(self, records: list[tuple[int, bytes]]) -> Head:
        head = self.head
        if records[0][0] != head.seq + 1:
            raise StoreError(f"record {records[0][0]} does not follow the log's seq {head.seq}")
        payloads = [payload for _, payload in records]
        deadline = time.monotonic() + self.leader_ttl
        while True:
            try:
                return self.log.append(self.term, head, payloads)
            except Deposed as exc:
                raise StoreError(f"{exc.message}; this broker takes no more writes") from None
            except EtcdUnavailable as exc:
                outcome = self._settle(head, payloads, deadline, exc)
                if outcome is not None:
                    return outcome
            except EtcdError as exc:
                raise StoreError(f"etcd refused the log append: {exc.message}") from None

    def _settle(self, head: Head, payloads: list[bytes], deadline: float, first: EtcdError) -> Head | None:
        """After an append without an answer: wait for etcd, then learn whether it took."""
        delay = 0.02
        while True:
            if time.monotonic() > deadline or self._broken is not None:
                raise StoreError(f"etcd did not answer for {self.leader_ttl} s ({first.message}): this broker's term is over; "
                                 "it takes no more writes")
            try:
                return self.log.settle(self.term, head, payloads)
            except Deposed as exc:
                raise StoreError(f"{exc.message}; this broker takes no more writes") from None
            except EtcdUnavailable:
                time.sleep(delay)  # etcd is electing or out of reach: try again shortly
                delay = min(0.25, delay * 2)

    def _keep(self) -> None:
        """The lease thread: refresh the term's lease every third of its TTL."""
        last_ok = time.monotonic()
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._stopping or self._broken is not None, timeout=self.leader_ttl / 3)
                if self._stopping or self._broken is not None:
                    return
            try:
                if not self.log.keep(self.term):
                    self._break(f"the leader key of mesh {self.mesh!r} is gone (its lease expired): this broker's "
                                "term is over; it takes no more writes")
                    return
                last_ok = time.monotonic()
            except EtcdError as exc:
                if time.monotonic() - last_ok > self.leader_ttl:
                    self._break(f"etcd did not answer for {self.leader_ttl} s ({exc.message}): this broker's term is over; "
                                "it takes no more writes")
                    return

    def _break(self, why: str) -> None:
        with self._lock:
            if self._broken is not None:
                return
            self._broken = why
            self._lock.notify_all()
        log.critical("store: %s", why, extra={"event": "cluster.deposed", "mesh": self.mesh})
        if self._on_durable is not None:
            self._on_durable()  # wakes the broker, which sees broken and stops

    # ------------------------------------------------------------------ Store
    @property
    def applied(self) -> int:
        return self.local.applied

    @property
    def broken(self) -> str | None:
        return self._broken or self.local.broken

    def durable(self) -> int:
        return min(self.local.durable(), self.acked)

    def sync(self) -> int:
        """The local flush (at ``full``), then up to the etcd timeout for etcd to have every
        record; returns :meth:`durable` (the broker sends what that covers)."""
        if self._broken is not None:
            raise StoreError(self._broken)
        if self.durability == "full":
            self.local.sync()
        target = self.local.applied
        assert self.kv is not None
        with self._lock:
            self._lock.wait_for(lambda: self.acked >= target or self._broken is not None, timeout=self.kv.timeout)
        if self._broken is not None:
            raise StoreError(self._broken)
        return self.durable()

    def pipeline(self, on_durable: Callable[[], None]) -> None:
        self._on_durable = on_durable
        self.local.pipeline(on_durable)

    def sync_soon(self) -> None:
        if self.durability == "full":
            self.local.sync_soon()

    def advertise(self, endpoints: list[str], pub: list[str]) -> None:
        """The leader key names where this broker serves (a standby's or a client's redirect)."""
        ident = orjson.dumps({"broker_id": self.broker_id, "pid": os.getpid(), "endpoints": endpoints, "pub": pub})
        try:
            self.log.set_leader(self.term, ident)
        except Deposed as exc:
            self._break(f"{exc.message}; this broker takes no more writes")
            raise StoreError(self._broken or exc.message) from None
        except EtcdError as exc:
            raise StoreError(f"etcd did not take this broker's endpoints: {exc.message}") from None

    def write(self) -> ContextManager[Txn]:
        if self._broken is not None:
            raise StoreError(self._broken)
        return self.local.write()

    def read(self) -> ContextManager[Txn]:
        return self.local.read()

    def usage(self) -> tuple[int, int]:
        return self.local.usage()

    def journal_figures(self) -> dict[str, int | float]:
        return {**self.local.journal_figures(), "etcd_acked_seq": self.acked}

    def backup(self, dest: str) -> None:
        self.local.backup(dest)

    def close(self) -> None:
        """A clean stop: what queued is appended (the broker flushed before), the term
        resigned so another broker may lead at once, then the local store closed."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._replicator.join(self.leader_ttl + 5)
        self._keeper.join(5)
        if self._broken is None:
            try:
                self.log.resign(self.term)
            except EtcdError as exc:
                log.warning("store: could not resign the leader key of mesh %r (%s): it lapses with its lease",
                            self.mesh, exc)
        self._close_quietly()


def _names(endpoints: Sequence[tuple[str, int]]) -> str:
    return ",".join(f"{h}:{p}" for h, p in endpoints)

