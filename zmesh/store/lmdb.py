"""The LMDB store (the default): LMDB for the state, the write-ahead journal for durability.

Rules it keeps:

* Every write transaction that changed something becomes ONE journal record (its change set,
  redo.py) written before LMDB commits it, and LMDB keeps that record's seq (meta
  ``journal_seq``) in the same transaction. LMDB itself is never synced per commit: the
  journal is the durability of record (journal.py), so a batch costs one append and, at
  ``full``, one fdatasync of a preallocated file, not LMDB's ~10 page writes plus a meta page.
* A restart replays the journal past LMDB's ``journal_seq``; after an OS crash (the machine's
  boot id changed and the stop was not clean) the LMDB file is not trusted and is rebuilt
  from the last snapshot plus the journal (checkpoints.py).
* A snapshot is taken in the background every :data:`CHECKPOINT_BYTES` of journal; the
  segments it covers are then retired (recycled) by the writer.
* A write transaction that changed nothing is aborted instead of committed, so read-only
  and heartbeat-only batches never touch the disk.

Durability levels (one name, stated beside every benchmark figure):

``full``  the journal record is fdatasynced before the transaction returns (so before any
          reply): survives power loss and an OS crash.
``fast``  the record is written (one pwrite) before the transaction returns and fdatasynced
          right after by a background thread, one flush per commit: a broker crash loses
          nothing; an OS crash or power loss may undo the last commits (those of the last
          flush, about a millisecond).
``none``  the record is written, never fdatasynced except at a segment's end, a checkpoint
          and a clean stop: a broker crash loses nothing; an OS crash may lose everything
          since the last of those.

LMDB layout (schema 4): every table lives in LMDB's main database, its keys prefixed with
one byte per table (core/schema.py). Schema 2 and 3 data (a named database per table) is
copied into this layout on open.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Callable, Iterator

import lmdb

from ..core.schema import JOURNAL_SEQ, PREFIXES, TABLES, U64
from ..errors import StoreError
from . import redo
from .base import DURABILITY, StoreFull, Txn  # noqa: F401  (Txn: the interface LmdbTxn keeps)
from .lmdb_txn import _PREFIX, LmdbTxn, _Write
from .checkpoints import JOURNAL_DIR, Checkpointer, History, applied_seq, current_boot_id
from .journal import SEGMENT_BYTES, Journal

log = logging.getLogger("zmesh.store")

#: journal bytes between two checkpoints (snapshots); bounds the replay after an OS crash
CHECKPOINT_BYTES = 128 << 20
#: journal records applied per LMDB transaction while replaying
REPLAY_BATCH = 4096
_SEQ_KEY = PREFIXES["meta"] + JOURNAL_SEQ

SCHEMA_VERSION = 4
#: older versions this zmesh upgrades on open: their data is copied into the current layout
#: (2 and 3 kept a named LMDB database per table; 2 -> 3 changed no records)
UPGRADES_IN_PLACE = frozenset({2, 3})

class LmdbStore:
    """The embedded default. One process owns a data directory (an flock says so)."""

    def __init__(self, path: str | os.PathLike[str], *, durability: str = "full",
                 map_size: int = 1 << 33, segment_bytes: int = SEGMENT_BYTES,
                 checkpoint_bytes: int = CHECKPOINT_BYTES, boot_id: str | None = None) -> None:
        if durability not in DURABILITY:
            raise StoreError(f"unknown durability '{durability}' (choose {', '.join(DURABILITY)})")
        self.path = os.fspath(path)
        self.durability = durability
        for name, value in (("segment_bytes", segment_bytes), ("checkpoint_bytes", checkpoint_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise StoreError(f"{name} must be a positive number of bytes, not {value!r}")
        self.checkpoint_bytes = checkpoint_bytes
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise StoreError(f"data directory {self.path} is not a directory")
        try:
            os.makedirs(self.path, exist_ok=True)
            self._lock = open(os.path.join(self.path, "broker.lock"), "a+")
        except OSError as exc:
            raise StoreError(f"cannot use data directory {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise StoreError(f"data directory {self.path} is in use by another broker") from None
        self._map_size = map_size
        self.journal: Journal | None = None
        self._checkpointer: Checkpointer | None = None
        self._broken: str | None = None
        self._schema_written = False
        try:
            self._open(boot_id if boot_id is not None else current_boot_id(), segment_bytes)
        except BaseException:
            if self.journal is not None:
                self.journal.close()
            if getattr(self, "env", None) is not None:
                self.env.close()
            self._lock.close()
            raise

    # ------------------------------------------------------------ open and recover
    def _open(self, boot_id: str, segment_bytes: int) -> None:
        started = time.monotonic()
        self.history = History(self.path, boot_id)
        trusted, why = self.history.trust()
        rebuilt = None
        if not trusted:
            rebuilt = self.history.rebuild(why)
        try:
            self._open_env()
        except StoreError:
            if rebuilt is not None or self.history.snapshot is None:
                raise
            rebuilt = self.history.rebuild("the LMDB file does not open")
            self._open_env()
        self._page_size = self.env.stat()["psize"]
        for _ in range(20):  # an upgrade copies every record: the map may need to grow first
            try:
                self.broker_id = self._check_schema()
                break
            except StoreFull:
                continue
        else:  # pragma: no cover - 20 doublings of the map
            raise StoreError(f"cannot upgrade {self.path}: the LMDB map keeps filling up")
        if not self.history.journaled_before:  # data a zmesh before the journal synced itself, or none
            self.env.sync(True)  # the schema check's writes too: then the basis a rebuild needs,
            self.history.snapshot_now(self.env)  # before anything is written unsynced
            self._schema_written = False
        self.history.running()  # from here on a crash of this boot trusts the LMDB file
        self.journal = journal = Journal(os.path.join(self.path, JOURNAL_DIR), segment_bytes=segment_bytes)
        with self.env.begin() as txn:
            applied = applied_seq(txn)
        replayed, gap = self._replay(journal, applied)
        applied += replayed
        end = journal.end
        assert end is not None
        lost = None
        if gap is not None:
            lost = gap
        elif end.seq < applied:
            lost = f"the journal ends at seq {end.seq} but LMDB holds seq {applied}"
        elif journal.first_seq is None and applied > 0 and self.history.journaled_before:
            lost = f"the journal has no segments but LMDB holds seq {applied}"
        if lost is not None:  # the journal cannot continue from LMDB's state
            log.error("store: %s; the journal starts over at seq %d from LMDB's state after a checkpoint",
                      lost, applied + 1, extra={"event": "journal.restarted", "seq": applied, "why": lost})
            journal.start(applied + 1)
        else:
            journal.start()
        # a rebuild needs the snapshot and the journal to meet: take one now when they do not
        covered = self.history.snapshot_seq
        first = journal.first_seq
        # and after a rebuild that replayed records: a second OS crash soon after would replay them again
        snapshot_now = (self._schema_written or covered is None or first is None or covered + 1 < first
                        or covered > applied or bool(rebuilt and replayed))
        if not end.clean:
            log.error("journal: %s: recovered to seq %d; %d byte(s) and %d later segment(s) not replayed, kept in %s",
                      end.reason, end.seq, end.lost_bytes, end.lost_segments, end.moved_to,
                      extra={"event": "journal.cut", "seq": end.seq, "reason": end.reason,
                             "lost_bytes": end.lost_bytes, "lost_segments": end.lost_segments,
                             "moved_to": end.moved_to})
        self.applied = applied
        if snapshot_now:  # a rebuild after an OS crash needs one: before the first write
            self.history.snapshot_now(self.env)
            journal.retire(applied)
        self._retire_upto: int | None = None
        self._since_checkpoint = 0
        self.checkpoints = 0  # taken since open (metrics)
        self.checkpoint_seq = self.history.snapshot_seq or 0  # the journal seq the latest snapshot holds
        self._flusher: threading.Thread | None = None
        self._flush_asked = threading.Event()
        self._defer_sync = False  # full: the caller flushes (pipeline())
        self._on_durable: Callable[[], None] | None = None
        #: (seq, record) after each commit: what a replicated store ships (replicated.py)
        self.on_record: Callable[[int, bytes], None] | None = None
        if self.durability == "fast":
            self._start_flusher()
        self._checkpointer = Checkpointer(self.history, self.env, self._checkpointed)
        took = time.monotonic() - started
        self.recovery = {"trusted": trusted, "why": why, "rebuilt": rebuilt, "replayed": replayed,
                         "seq": applied, "journal_end": end.reason, "seconds": round(took, 3)}
        # a plain open is the broker's recovery line to tell (it names store.recovery); a
        # replay or a rebuild is worth a line of its own
        log.log(logging.INFO if replayed or rebuilt or not end.clean else logging.DEBUG,
                "store: opened at journal seq %d in %.3f s (%s%s; %d record(s) replayed; journal end: %s)",
                 applied, took, why, "; " + rebuilt if rebuilt else "", replayed,
                 "zeros after the last record" if end.clean else end.reason,
                 extra={"event": "store.opened", **self.recovery})

    def _open_env(self) -> None:
        try:
            # never synced per commit: the journal is the durability of record (see above)
            self.env = lmdb.open(
                self.path, map_size=self._map_size, max_dbs=len(TABLES) + 2, subdir=True,
                sync=False, metasync=False, readahead=False, max_readers=126,
            )
        except lmdb.Error as exc:
            raise StoreError(f"cannot open LMDB in {self.path}: {exc}") from None

    def _replay(self, journal: Journal, applied: int) -> tuple[int, str | None]:
        """Apply the journal's records past ``applied`` to LMDB, REPLAY_BATCH a transaction;
        returns (how many, why it stopped early: a gap before the first record)."""
        count, gap, expected = 0, None, applied + 1
        txn = self.env.begin(write=True)
        try:
            for seq, payload in journal.recover(after=applied):
                if gap is not None:
                    continue  # drained to the end, not applied
                if seq != expected:
                    gap = f"the journal has no records {expected}..{seq - 1} (LMDB holds seq {applied})"
                    continue
                _apply(txn, payload)
                count += 1
                expected = seq + 1
                if count % REPLAY_BATCH == 0:  # the applied seq once per transaction, with its records
                    txn.put(_SEQ_KEY, U64.pack(seq))
                    txn.commit()
                    txn = self.env.begin(write=True)
            if count % REPLAY_BATCH:
                txn.put(_SEQ_KEY, U64.pack(expected - 1))
            txn.commit()
        except lmdb.MapFullError:
            txn.abort()
            raise StoreError(f"the LMDB map ({self._map_size} bytes) is too small to replay the journal: "
                             "raise map_size") from None
        except BaseException:
            txn.abort()
            raise
        return count, gap

    def _check_schema(self) -> str:
        """Checked (and a new store's identity written) before the journal opens: a change
        here is not journaled, so it sets ``_schema_written`` and the open takes a snapshot."""
        with self._unjournaled() as txn:
            raw = txn.get("meta", b"schema")
            if raw is None:
                raw = self._from_named_databases(txn._txn)
            version = None if raw is None else int(raw)
            if version is not None and version > SCHEMA_VERSION:
                raise StoreError(
                    f"data directory {self.path} has schema version {version}; this zmesh "
                    f"supports up to {SCHEMA_VERSION}: upgrade zmesh (the data was not touched)")
            if version is not None and version < SCHEMA_VERSION and version not in UPGRADES_IN_PLACE:
                raise StoreError(
                    f"data directory {self.path} has schema version {version} from a "
                    f"pre-release zmesh; this zmesh needs {SCHEMA_VERSION} and has no "
                    "migration for it: start with an empty data directory")
            if version != SCHEMA_VERSION:  # a new store, or one upgraded in place
                txn.put("meta", b"schema", str(SCHEMA_VERSION).encode())
            bid = txn.get("meta", b"broker_id")
            if bid is None:
                bid = uuid.uuid4().hex.encode()
                txn.put("meta", b"broker_id", bid)
            return bid.decode()

    def _from_named_databases(self, txn: lmdb.Transaction) -> bytes | None:
        """Schema 2 and 3 kept one named database per table: read their schema version and,
        if this zmesh can upgrade it, copy every record into the one-tree layout and drop
        them, in the caller's transaction (all or nothing). None for an empty store."""
        try:
            meta = self.env.open_db(b"meta", txn=txn, create=False)
        except lmdb.NotFoundError:
            return None
        version = txn.get(b"schema", db=meta)
        if version is None or int(version) not in UPGRADES_IN_PLACE:
            return version  # type: ignore[return-value]  # bytes (no buffers); refused by the caller
        for name in TABLES:
            try:
                db = self.env.open_db(name.encode(), txn=txn, create=False)
            except lmdb.NotFoundError:
                continue
            for key, value in txn.cursor(db=db):
                txn.put(_PREFIX[name] + key, value)
            txn.drop(db, delete=True)
        return version  # type: ignore[return-value]

    @contextmanager
    def _unjournaled(self) -> Iterator[LmdbTxn]:
        txn = self.env.begin(write=True)
        wrapped = LmdbTxn(txn)
        try:
            yield wrapped
            if wrapped.changes:
                txn.commit()
                self._schema_written = True
            else:
                txn.abort()
        except BaseException as exc:
            txn.abort()
            if isinstance(exc, (lmdb.MapFullError, StoreFull)):
                raise self._grown() from None
            raise

    def _grown(self) -> StoreFull:
        """The map doubled after a transaction did not fit: what to raise (apply again)."""
        size = self.env.info()["map_size"] * 2
        self.env.set_mapsize(size)
        return StoreFull(f"LMDB map was full; grown to {size} bytes: apply again")

    def write(self) -> "_Write":
        """One write transaction: journaled and committed (and synced per durability) if
        the block returns and something changed, aborted otherwise."""
        if self._broken is not None:
            raise StoreError(self._broken)
        return _Write(self)

    def _commit(self, txn: lmdb.Transaction, changes: dict[bytes, bytes | None]) -> None:
        """The journal record first (LMDB's ``journal_seq`` in the same transaction), then
        LMDB's commit (no sync), then the flush the durability level asks for. A commit that
        fails takes its record back; a flush that fails stops every later write (a broker
        must not go on answering writes it cannot make durable)."""
        journal = self.journal
        assert journal is not None
        if not changes:
            txn.commit()
            return
        payload = redo.encode(changes)
        seq = journal.next_seq
        txn.put(_SEQ_KEY, U64.pack(seq))  # may raise MapFull: nothing is in the journal yet
        journal.append(payload)
        try:
            txn.commit()
        except BaseException:
            journal.rewind(seq)
            raise
        self.applied = seq
        if self.on_record is not None:  # a replicated store ships the record (replicated.py)
            self.on_record(seq, payload)
        self._flush_per_durability()
        self._after_append(len(payload))

    def _flush_per_durability(self) -> None:
        if self.durability == "full":
            if not self._defer_sync:
                self.sync()
        elif self.durability == "fast":
            self._flush_asked.set()

    def _after_append(self, size: int) -> None:
        """Checkpoint bookkeeping after ``size`` bytes of journal (a commit's, or an applied
        batch's)."""
        journal = self.journal
        assert journal is not None
        self._since_checkpoint += size
        if self._retire_upto is not None:
            upto, self._retire_upto = self._retire_upto, None
            journal.retire(upto)
        if self._since_checkpoint >= self.checkpoint_bytes and self._checkpointer is not None:
            self._since_checkpoint = 0
            self._checkpointer.request()

    def apply_records(self, records: list[tuple[int, bytes]]) -> int:
        """Apply redo records another broker wrote (a replica following the mesh's log), in
        one transaction, each journaled at its own seq: they must follow :attr:`applied`
        without a gap. Returns the seq applied last. The flush is the durability level's."""
        journal = self.journal
        assert journal is not None
        if self._broken is not None:
            raise StoreError(self._broken)
        if not records:
            return self.applied
        expected = self.applied + 1
        txn = self.env.begin(write=True)
        first = journal.next_seq
        try:
            size = 0
            for seq, payload in records:
                if seq != expected or journal.next_seq != seq:
                    raise StoreError(f"replicated record {seq} does not follow this store's seq {expected - 1}")
                _apply(txn, payload)
                journal.append(payload)
                size += len(payload)
                expected += 1
            txn.put(_SEQ_KEY, U64.pack(expected - 1))
            txn.commit()
        except lmdb.MapFullError:
            txn.abort()
            journal.rewind(first)
            raise self._grown() from None
        except BaseException:
            txn.abort()
            if journal.next_seq != first:
                journal.rewind(first)
            raise
        self.applied = expected - 1
        self._flush_per_durability()
        self._after_append(size)
        return self.applied

    def _checkpointed(self, seq: int) -> None:
        """From the checkpoint thread: the writer retires the covered segments next time."""
        self._retire_upto = seq
        self.checkpoints += 1
        self.checkpoint_seq = seq

    # ------------------------------------------------------------ flushes
    def advertise(self, endpoints: list[str], pub: list[str]) -> None:
        """Nothing to tell: one broker, its own data."""

    @property
    def broken(self) -> str | None:
        """Why this store takes no more writes (a flush failed), or None."""
        return self._broken

    def durable(self) -> int:
        if self.durability != "full":
            return self.applied
        assert self.journal is not None
        return self.journal.synced

    def sync(self) -> int:
        """fdatasync the journal now; a failure stops every later write (a broker must not
        go on answering writes it cannot make durable)."""
        journal = self.journal
        assert journal is not None
        try:
            journal.sync()
        except OSError as exc:
            self._broken = (f"the journal in {journal.path} could not be flushed ({exc.strerror}): this "
                            "broker takes no more writes; restart it (the journal replays what it has)")
            log.critical("%s", self._broken, extra={"event": "journal.sync_failed", "error": str(exc)})
            raise StoreError(self._broken) from None
        return self.durable()

    def pipeline(self, on_durable: Callable[[], None]) -> None:
        self._on_durable = on_durable
        if self.durability == "full":
            self._defer_sync = True
            if self._flusher is None:
                self._start_flusher()

    def sync_soon(self) -> None:
        self._flush_asked.set()

    def _start_flusher(self) -> None:
        self._flusher = threading.Thread(target=self._flush, name="zmesh-journal-flush", daemon=True)
        self._flusher.start()

    def _flush(self) -> None:
        """The flush thread: ``fast`` after each commit, ``full`` when the broker asks
        (pipeline()); the flushes it cannot keep up with merge into one."""
        while True:
            self._flush_asked.wait()
            self._flush_asked.clear()
            if self._flusher is None:
                return
            try:
                self.sync()
            except StoreError:
                return
            finally:
                if self._on_durable is not None:
                    self._on_durable()

    def checkpoint(self) -> int:
        """A snapshot now, in the caller's thread, and the segments it covers retired;
        returns its journal seq (tests, and a broker asked to)."""
        assert self.journal is not None
        seq = self.history.snapshot_now(self.env)
        self.journal.retire(seq)
        self._since_checkpoint = 0
        self.checkpoints += 1
        self.checkpoint_seq = seq
        return seq

    @contextmanager
    def read(self) -> Iterator[LmdbTxn]:
        txn = self.env.begin(write=False)
        try:
            yield LmdbTxn(txn)
        finally:
            txn.abort()

    def journal_figures(self) -> dict[str, int | float]:
        """The journal's and the checkpoints' figures for the metrics (read between passes;
        the counters are since open)."""
        journal = self.journal
        assert journal is not None
        segments, disk = journal.on_disk()
        return {"written_seq": journal.last_seq, "synced_seq": journal.synced, "flushes": journal.flushes,
                "flush_seconds": journal.flush_seconds, "written_bytes": journal.written_bytes,
                "segments": segments, "disk_bytes": disk, "checkpoint_seq": self.checkpoint_seq,
                "checkpoints": self.checkpoints, "since_checkpoint_bytes": self._since_checkpoint}

    def usage(self) -> tuple[int, int]:
        """(bytes the data uses, up to the last page written, free pages included; the map's
        size). Cheap: no transaction, no syscall beyond LMDB's own."""
        info = self.env.info()
        return (info["last_pgno"] + 1) * self._page_size, info["map_size"]

    def backup(self, dest: str) -> None:
        """LMDB's copy in a read transaction of its own, free pages left out (MDB_CP_COMPACT):
        the writer goes on meanwhile."""
        self.env.copy(dest, compact=True)

    def close(self) -> None:
        """A clean stop: the journal flushed, LMDB synced, the clean marker written (the next
        start trusts the LMDB file whatever happened to the machine meanwhile)."""
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        if self._flusher is not None:
            flusher, self._flusher = self._flusher, None
            self._flush_asked.set()
            flusher.join()
        clean = False
        if self.journal is not None:
            try:
                self.journal.close()
                self.env.sync(True)
                clean = self._broken is None
            except (OSError, lmdb.Error) as exc:
                log.error("store: the clean stop could not sync (%s): the next start treats it as a crash", exc)
        if clean:
            self.history.stopped_cleanly(self.applied)
        self.env.close()
        self._lock.close()


def _apply(txn: lmdb.Transaction, payload: bytes) -> None:
    """A redo record's changes, in an LMDB transaction (the journal's replay, a replica's apply)."""
    put, delete = txn.put, txn.delete
    for key, value in redo.parse(payload):
        if value is None:
            delete(key)
        else:
            put(key, value)
