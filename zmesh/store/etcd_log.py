"""The mesh's replicated log on etcd: who is active (the leader key and its epoch), and the
redo records (store/redo.py) every broker of the mesh applies in seq order.

Rules it keeps:

* Keys live under ``/zm/<mesh>/``: ``leader`` (the active broker, put with an etcd lease,
  created only if absent), ``head`` (``seq | epoch``, the last entry), ``log/<seq>/<part>``
  (an entry's record, in parts of at most :data:`CHUNK` bytes). docs/CLUSTER.md is the
  reference.
* The **epoch** of a term is the ``create_revision`` of its leader key: etcd makes it, it
  only grows, and no clock is read to decide who leads.
* Every write is guarded by the epoch (``create_revision(leader) == epoch``) and by the head
  (``mod_revision(head) == the head the writer last saw``). So a deposed broker's write is
  refused by etcd itself (:class:`Deposed`), and a retry after a lost answer cannot append
  twice: :meth:`EtcdLog.settle` re-reads the head to learn whether it took.
* An entry is visible only when the head covers it. Its parts may be written over several
  transactions (a record above one transaction's size); each part names its epoch and the
  part count. A term deposed between two parts leaves them behind; the next term writes the
  seq again with its own, higher epoch, and readers assemble only the newest epoch's parts
  under a seq (etcd refuses a delete and a put of one key in one transaction, so the
  leftovers stay until :meth:`EtcdLog.trim`).
* Nothing here applies a record or opens a store: it moves bytes with fencing.
"""

from __future__ import annotations

import logging
import struct
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from .etcd_kv import (MAX_TXN_BYTES, MAX_TXN_OPS, Compare, Delete, EtcdCompacted, EtcdError, EtcdKV, KV, Put,
                      Watch, prefix_end)
from ..errors import StoreError

log = logging.getLogger(__name__)

#: the largest part of one record in one key (well under etcd's 1.5 MiB request limit)
CHUNK = 1 << 20
#: an entry's key: log/ + seq (16 hex digits, so keys sort by seq) + / + part (4 hex digits)
_HEAD = struct.Struct(">QQ")  # seq, epoch
_PART = struct.Struct(">QHH")  # epoch, part index, part count


class Deposed(StoreError):
    """This broker's term is over: etcd refused a write guarded by its epoch."""


class LogGap(StoreError):
    """The log is missing an entry the head covers (a bug or a damaged cluster)."""


@dataclass(frozen=True)
class Head:
    seq: int
    epoch: int
    #: the head key's mod_revision (0: no head yet): what the next append compares
    revision: int


@dataclass(frozen=True)
class Term:
    epoch: int
    lease: int


@dataclass(frozen=True)
class Entry:
    seq: int
    epoch: int
    record: bytes


class EtcdLog:
    def __init__(self, kv: EtcdKV, mesh: str) -> None:
        if not mesh or "/" in mesh:
            raise ValueError(f"mesh name {mesh!r}: give a name without '/'")
        self.kv = kv
        self.root = f"/zm/{mesh}/".encode()
        self.leader_key = self.root + b"leader"
        self.head_key = self.root + b"head"
        self.log_prefix = self.root + b"log/"

    # ------------------------------------------------------------------ keys
    def entry_prefix(self, seq: int) -> bytes:
        return self.log_prefix + b"%016x/" % seq

    def part_key(self, seq: int, part: int) -> bytes:
        return self.entry_prefix(seq) + b"%04x" % part

    @staticmethod
    def seq_of(key: bytes) -> int:
        return int(key.rsplit(b"/", 2)[-2], 16)

    # ------------------------------------------------------------------ leader
    def leader(self) -> tuple[int, bytes] | None:
        """(epoch, the leader's value) of the current term, or None when no one leads."""
        kv = self.kv.get(self.leader_key)
        return None if kv is None else (kv.create_revision, kv.value)

    def campaign(self, ident: bytes, ttl: int) -> Term | None:
        """Take the leader key if it is free: a new term whose epoch is the key's create
        revision, held by an etcd lease of ``ttl`` s. None when another broker leads."""
        lease = self.kv.grant(ttl)
        result = self.kv.txn([Compare(self.leader_key, "create", "==", 0)],
                             [Put(self.leader_key, ident, lease)])
        if not result.succeeded:
            self.kv.revoke(lease)
            return None
        log.info("won the leader key of %s: epoch %d", self.root.decode(), result.revision)
        return Term(result.revision, lease)

    def keep(self, term: Term) -> bool:
        """Refresh the term's lease; False when it is gone (the term is over)."""
        if self.kv.keepalive(term.lease) <= 0:
            return False
        found = self.leader()
        return found is not None and found[0] == term.epoch

    def set_leader(self, term: Term, ident: bytes) -> None:
        """Replace the leader key's value while the term holds it (its lease kept); raises
        :class:`Deposed` when the term is over."""
        result = self.kv.txn([Compare(self.leader_key, "create", "==", term.epoch)],
                             [Put(self.leader_key, ident, term.lease)])
        if not result.succeeded:
            raise Deposed(f"the leader key of {self.root.decode()} is no longer this broker's (epoch {term.epoch})")

    def resign(self, term: Term) -> None:
        """End the term now (a clean stop): another broker may campaign at once."""
        self.kv.txn([Compare(self.leader_key, "create", "==", term.epoch)], [Delete(self.leader_key)])
        self.kv.revoke(term.lease)

    # ------------------------------------------------------------------ head
    def head(self) -> Head:
        return _head_of(self.kv.get(self.head_key))

    # ------------------------------------------------------------------ append
    def _guards(self, term: Term, expect: Head) -> list[Compare]:
        return [Compare(self.leader_key, "create", "==", term.epoch),
                Compare(self.head_key, "mod", "==", expect.revision)]

    def _parts(self, seq: int, epoch: int, record: bytes) -> list[Put]:
        count = max(1, -(-len(record) // CHUNK))
        if count > 0xFFFF:
            raise StoreError(f"a record of {len(record)} bytes is above the log's {0xFFFF * CHUNK} bytes")
        return [Put(self.part_key(seq, i), _PART.pack(epoch, i, count) + record[i * CHUNK:(i + 1) * CHUNK])
                for i in range(count)]

    def append(self, term: Term, expect: Head, records: Sequence[bytes]) -> Head:
        """Append ``records`` after ``expect`` (the head this broker last saw) as seqs
        expect.seq+1...; returns the new head. Raises :class:`Deposed` when the term is
        over or another writer moved the head, EtcdUnavailable when etcd did not answer
        (the outcome is unknown: :meth:`settle`)."""
        if not records:
            return expect
        seq = expect.seq
        ops: list[Put] = []
        size = 0
        written: list[list[Put]] = []
        for record in records:
            seq += 1
            for part in self._parts(seq, term.epoch, record):
                cost = len(part.key) + 16 + len(part.value)
                if ops and (len(ops) + 2 > MAX_TXN_OPS or size + cost > MAX_TXN_BYTES - 4096):
                    written.append(ops)
                    ops, size = [], 0
                ops.append(part)
                size += cost
        head = Put(self.head_key, _HEAD.pack(seq, term.epoch))
        guards = self._guards(term, expect)
        for early in written:  # parts of a large batch ahead of the head: invisible until it moves
            self._write(guards, early)
        revision = self._write(guards, [*ops, head])
        return Head(seq, term.epoch, revision)

    def _write(self, guards: list[Compare], ops: list[Put]) -> int:
        result = self.kv.txn(guards, ops)
        if not result.succeeded:
            raise Deposed(f"etcd refused the write: this broker's term of {self.root.decode()} is over "
                          "(another broker leads, or moved the log)")
        return result.revision

    def settle(self, term: Term, expect: Head, records: Sequence[bytes]) -> Head | None:
        """After :meth:`append` ended without an answer: the new head if the append took
        (the head is ours and covers the records), None if it did not (the head is still
        ``expect``: append again). Raises :class:`Deposed` when the head moved otherwise."""
        now = self.head()
        if now.revision == expect.revision:
            return None
        if now.epoch == term.epoch and now.seq == expect.seq + len(records):
            return now
        raise Deposed(f"the log of {self.root.decode()} moved to seq {now.seq} (epoch {now.epoch}) "
                      f"while this broker (epoch {term.epoch}) appended after {expect.seq}")

    # ------------------------------------------------------------------ read
    def entries(self, after: int, upto: Head | None = None, revision: int = 0) -> Iterator[Entry]:
        """The entries after seq ``after`` up to the head (``upto``, or the head now), in seq
        order, read at one revision. Raises :class:`LogGap` on a missing entry."""
        head = upto if upto is not None else self.head()
        if head.seq <= after:
            return
        start = self.entry_prefix(after + 1)
        end = prefix_end(self.log_prefix)
        assembler = _Assembler(after, head)
        for kv in self.kv.scan(start, end, revision=revision or 0):
            yield from assembler.add(kv)
            if assembler.done:
                return
        if not assembler.done:
            raise LogGap(f"the log of {self.root.decode()} ends at seq {assembler.next - 1}, "
                         f"its head is at {head.seq}")

    def follow(self, after: int, on_entries: Callable[[list[Entry]], None],
               on_error: Callable[[EtcdError | StoreError], None]) -> "Follower":
        """Catch up from seq ``after`` by range reads, then watch: ``on_entries`` gets every
        entry once, in seq order, as the head covers it (in the watch's thread)."""
        f = Follower(self, after, on_entries, on_error)
        f.start()
        return f

    def trim(self, upto: int) -> int:
        """Delete the entries at and below seq ``upto`` (a snapshot covers them); how many keys went."""
        return self.kv.delete_range(self.log_prefix, self.entry_prefix(upto + 1))


def _head_of(kv: KV | None) -> Head:
    """The head a head key's value says (no key: the empty log)."""
    if kv is None:
        return Head(0, 0, 0)
    seq, epoch = _HEAD.unpack(kv.value)
    return Head(seq, epoch, kv.mod_revision)


class _Assembler:
    """Parts in key order -> whole entries, for entries after ``after`` up to ``head``."""

    def __init__(self, after: int, head: Head) -> None:
        self.next = after + 1
        self.head = head
        self._pending: dict[int, dict[int, tuple[int, int, bytes]]] = {}

    @property
    def done(self) -> bool:
        return self.next > self.head.seq

    def add(self, kv: KV) -> Iterator[Entry]:
        seq = EtcdLog.seq_of(kv.key)
        if seq < self.next or seq > self.head.seq:
            return
        epoch, index, count = _PART.unpack_from(kv.value)
        self._pending.setdefault(seq, {})[index] = (epoch, count, kv.value[_PART.size:])
        while self.next in self._pending:
            parts = self._pending[self.next]
            # the parts of the term that wrote the entry last (an older term's leftovers differ)
            epoch = max(e for e, _, _ in parts.values())
            mine = {i: (c, chunk) for i, (e, c, chunk) in parts.items() if e == epoch}
            count = next(iter(mine.values()))[0]
            if len(mine) < count:
                return
            del self._pending[self.next]
            yield Entry(self.next, epoch, b"".join(mine[i][1] for i in range(count)))
            self.next += 1
            if self.done:
                return


class Follower:
    """Delivers the log's entries from a seq on (see :meth:`EtcdLog.follow`)."""

    def __init__(self, elog: EtcdLog, after: int, on_entries: Callable[[list[Entry]], None],
                 on_error: Callable[[EtcdError | StoreError], None]) -> None:
        self.elog = elog
        self.applied = after
        self._on_entries, self._on_error = on_entries, on_error
        self._lock = threading.Lock()
        self._watch: Watch | None = None
        self._buffer: dict[bytes, KV] = {}
        self._stopped = False

    def start(self) -> None:
        kv = self.elog.kv
        revision = kv.revision()
        head = self._head_at(revision)
        batch = list(self.elog.entries(self.applied, head, revision))
        if batch:
            self.applied = batch[-1].seq
            self._on_entries(batch)
        self._watch = kv.watch(self.elog.root, revision + 1, self._events, self._failed)

    def _head_at(self, revision: int) -> Head:
        found = list(self.elog.kv.scan(self.elog.head_key, self.elog.head_key + b"\x00", revision=revision))
        return _head_of(found[0] if found else None)

    def _events(self, batch: list[tuple[str, KV]]) -> None:
        elog = self.elog
        with self._lock:
            if self._stopped:
                return
            heads = []
            for kind, kv in batch:
                if kv.key.startswith(elog.log_prefix):
                    if kind == "put":
                        self._buffer[kv.key] = kv
                    else:
                        self._buffer.pop(kv.key, None)
                elif kv.key == elog.head_key and kind == "put":
                    heads.append(_head_of(kv))
            for head in heads:
                if head.seq <= self.applied:
                    continue
                assembler = _Assembler(self.applied, head)
                out: list[Entry] = []
                for key in sorted(k for k in self._buffer if elog.seq_of(k) <= head.seq):
                    out.extend(assembler.add(self._buffer[key]))
                if not assembler.done:
                    self._on_error(LogGap(f"the watch of {elog.root.decode()} saw head {head.seq} without "
                                          f"entries {assembler.next}-{head.seq}"))
                    return
                for key in [k for k in self._buffer if elog.seq_of(k) <= head.seq]:
                    del self._buffer[key]
                self.applied = head.seq
                self._on_entries(out)

    def _failed(self, exc: EtcdError) -> None:
        if isinstance(exc, EtcdCompacted):
            exc = EtcdCompacted(f"the log of {self.elog.root.decode()} was compacted past seq {self.applied}: "
                                "reload from the snapshot", exc.revision)
        self._on_error(exc)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch.join()
