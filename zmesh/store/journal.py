"""The write-ahead journal: the store's durability of record. Files only; what a record
holds is redo.py's, when a record is written and synced is the store's (lmdb.py).

Rules it keeps:

* A record is ``length u32 | crc32c u32 | seq u64 | payload`` (little-endian; the CRC is
  Castagnoli's, over seq and payload). Seqs are contiguous: each record is the last one's
  seq + 1, and recovery takes a record only if its seq is the one expected.
* One record is one ``pwrite``; :meth:`Journal.sync` is one ``fdatasync`` and says up to
  which seq the disk has the journal. Nobody is told a write is durable before that.
* Segments (``<index>.wal``, 16 hex digits) are preallocated and zero-filled ahead of need
  by a background thread (``spare``, asked for when the active segment is half full):
  overwriting allocated blocks lets the file system skip its own journal on ``fdatasync``.
  Sizes ramp from 1 MiB, doubling, up to ``segment_bytes`` (64 MiB), so a small store stays
  small. A segment's 32-byte header (magic, version, first seq,
  CRC) is written and synced into the spare before it is renamed into place, and the
  directory is fsynced after every rename, so a segment on disk is always whole.
* Past the last record of the active segment there are only zeros: spares are zero-filled
  (retired segments are recycled by zeroing them, never reused dirty), a cut at recovery
  zeroes what follows it, and a record whose commit failed is zeroed (:meth:`rewind`).
* Recovery (:meth:`Journal.recover`) reads the segments in order and ends at the first of:
  zeros (the normal end), a torn or corrupt record (short, bad CRC, impossible length, a
  seq out of order), or a missing segment (an index or first-seq gap). Nothing past that
  point is applied; what was there is moved to ``lost-<time>/`` and logged as an error with
  the seq recovered to, and the writer continues right after the last good record.
* Segments are retired only when a checkpoint covers every record in them
  (:meth:`retire`); the active one never is.
"""

from __future__ import annotations

import logging
import mmap
import os
import shutil
import struct
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from crc32c import crc32c

from ..errors import StoreError

log = logging.getLogger("zmesh.store")

MAGIC = b"ZMESHWAL"
VERSION = 1
#: segment header: magic, version, first seq, crc32c of the 20 bytes before it, 8 spare bytes
_SEG = struct.Struct("<8sIQI8x")
HEADER = _SEG.size  # 32
#: record header: payload length, crc32c(seq + payload), seq
_REC = struct.Struct("<IIQ")
RECORD_HEAD = _REC.size  # 16
_SEQ = struct.Struct("<Q")
#: the largest segment (etcd's WAL uses 64 MB segments too); a journal's first is
#: FIRST_SEGMENT_BYTES and each next one twice the last, up to this
SEGMENT_BYTES = 64 << 20
FIRST_SEGMENT_BYTES = 1 << 20
SUFFIX = ".wal"
SPARE = "spare"
_ZEROS = bytes(1 << 20)
#: a spare not ready when the active segment fills: the writer waits, and says so past this
_SLOW_SPARE_S = 0.05


def _crc(seq: int, payload: bytes | memoryview) -> int:
    return crc32c(payload, crc32c(_SEQ.pack(seq)))


def _name(index: int) -> str:
    return f"{index:016x}{SUFFIX}"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _zero(fd: int, start: int, end: int) -> None:
    at = start
    while at < end:
        n = min(len(_ZEROS), end - at)
        os.pwrite(fd, _ZEROS[:n], at)
        at += n


@dataclass
class Segment:
    index: int
    first_seq: int
    path: str
    size: int


@dataclass
class End:
    """Where recovery stopped and why (``clean``: zeros or the last segment's end)."""

    seq: int  # the last good record's seq (first_seq - 1 of the journal when it has none)
    segment: int  # index of the segment it is in
    offset: int  # where the next record goes
    reason: str  # "clean", or what was wrong with the record there
    lost_bytes: int = 0
    lost_segments: int = 0
    moved_to: str | None = None

    @property
    def clean(self) -> bool:
        return self.reason == "clean"


class Journal:
    """One journal directory. ``recover()`` first (it finds the end), then ``start()``,
    then ``append`` / ``sync`` from one writer thread; ``sync`` may run in another."""

    def __init__(self, path: str, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        if isinstance(segment_bytes, bool) or not isinstance(segment_bytes, int) or segment_bytes < HEADER + RECORD_HEAD + 64:
            raise StoreError(f"journal segment size {segment_bytes} is too small")
        self.path = path
        self.segment_bytes = segment_bytes
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot use journal directory {path}: {exc.strerror}") from None
        self.segments: list[Segment] = self._list()
        self.end: End | None = None
        self._fd = -1
        self._pos = 0
        self._cap = 0
        self._next = 1
        self._last_at: int | None = None  # where the last append went (rewind)
        self.synced = 0  # every record up to this seq is on disk
        self.flushes = 0  # fdatasyncs that flushed records, since open (metrics)
        self.flush_seconds = 0.0  # the time they took
        self.written_bytes = 0  # record bytes appended since open
        self._sync_lock = threading.Lock()  # sync() against a segment switch
        self._spare_cond = threading.Condition()
        self._spare_ready = os.path.exists(os.path.join(path, SPARE))
        self._spare_wanted = 0  # the size of the spare the thread is asked to make (0: none)
        self._ahead_at = 1 << 62  # the active segment's offset past which the next is prepared
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ reading
    def _list(self) -> list[Segment]:
        found = []
        for entry in os.listdir(self.path):
            if not entry.endswith(SUFFIX):
                continue
            try:
                index = int(entry[:-len(SUFFIX)], 16)
            except ValueError:
                continue
            full = os.path.join(self.path, entry)
            found.append(Segment(index, 0, full, os.path.getsize(full)))
        found.sort(key=lambda s: s.index)
        return found

    @property
    def first_seq(self) -> int | None:
        """The first seq the journal can give (None: no segment yet)."""
        return self.segments[0].first_seq if self.segments and self.end is not None else None

    def recover(self, after: int = 0) -> Iterator[tuple[int, bytes]]:
        """Every good record with a seq greater than ``after``, in order, as (seq, payload);
        sets :attr:`end` when exhausted (cuts and moves aside what follows a bad record).
        The first segment's first seq may be anything (a journal starts where its store's
        snapshot ends); ``after`` below it is the store's to judge (see :attr:`first_seq`)."""
        last: int | None = None
        end: End | None = None
        for number, seg in enumerate(self.segments):
            head = self._header(seg)
            if head is None or (last is not None and (seg.index != self.segments[number - 1].index + 1
                                                      or head != last + 1)):
                prev = self.segments[number - 1] if number else None
                why = (f"segment {os.path.basename(seg.path)} has no valid header" if head is None else
                       f"segment {os.path.basename(seg.path)} does not follow "
                       f"{os.path.basename(prev.path) if prev else 'nothing'} (a segment is missing)")
                if prev is None:  # not even a first segment: start over empty
                    end = End(after, -1, 0, why)
                else:
                    end = End(last if last is not None else prev.first_seq - 1, prev.index, self._scan_end, why)
                self._cut(end, number, cut_in=None)
                break
            seg.first_seq = head
            if last is None:
                last = head - 1
            yield from self._records(seg, last, after)
            last = self._scan_last
            if self._scan_reason != "clean":
                end = End(last, seg.index, self._scan_end, self._scan_reason)
                self._cut(end, number + 1, cut_in=seg)
                break
        else:
            if self.segments:
                seg = self.segments[-1]
                end = End(last if last is not None else after, seg.index, self._scan_end, "clean")
            else:
                end = End(after, -1, 0, "clean")
        self.end = end
        self.segments = [s for s in self.segments if s.index <= end.segment]
        self._next = end.seq + 1
        self.synced = end.seq

    def _header(self, seg: Segment) -> int | None:
        with open(seg.path, "rb") as f:
            raw = f.read(HEADER)
        if len(raw) < HEADER:
            return None
        magic, version, first, crc = _SEG.unpack(raw)
        if magic != MAGIC or crc != crc32c(raw[:20]):
            return None
        if version != VERSION:
            raise StoreError(f"journal segment {seg.path} has format version {version}; this zmesh reads "
                             f"{VERSION}: upgrade zmesh (nothing was changed)")
        return first

    def _records(self, seg: Segment, last: int, after: int) -> Iterator[tuple[int, bytes]]:
        """The segment's good records; leaves where and why it ended in _scan_*."""
        self._scan_last, self._scan_end, self._scan_reason = last, HEADER, "clean"
        with open(seg.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size <= HEADER:
                return
            with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as data:
                at = HEADER
                while at + RECORD_HEAD <= size:
                    length, crc, seq = _REC.unpack_from(data, at)
                    if length == 0 and crc == 0 and seq == 0:
                        break  # zeros: the normal end
                    if seq != last + 1:
                        self._scan_reason = f"record at offset {at} has seq {seq}, expected {last + 1}"
                        break
                    if at + RECORD_HEAD + length > size:
                        self._scan_reason = (f"record {seq} at offset {at} is torn: {length} byte(s) "
                                             f"announced, {size - at - RECORD_HEAD} in the segment")
                        break
                    payload = data[at + RECORD_HEAD:at + RECORD_HEAD + length]
                    if _crc(seq, payload) != crc:
                        self._scan_reason = f"record {seq} at offset {at} is corrupt (CRC mismatch)"
                        break
                    at += RECORD_HEAD + length
                    last = seq
                    self._scan_last, self._scan_end = last, at
                    if seq > after:
                        yield seq, payload
                else:
                    if at < size and data[at:size].strip(b"\0"):  # short of a record header at the end
                        self._scan_reason = f"{size - at} byte(s) at offset {at} are a torn record header"

    def _cut(self, end: End, later: int, cut_in: Segment | None) -> None:
        """Move what follows ``end`` aside (the rest of ``cut_in`` copied, later segments
        moved) and zero it, so nothing past the last good record is ever read again."""
        moved = os.path.join(self.path, time.strftime("lost-%Y%m%dT%H%M%S", time.gmtime()) + f"-{end.seq}")
        os.makedirs(moved, exist_ok=True)
        if cut_in is not None:
            end.lost_bytes = max(0, cut_in.size - end.offset)
            shutil.copyfile(cut_in.path, os.path.join(moved, os.path.basename(cut_in.path)))
            fd = os.open(cut_in.path, os.O_RDWR)
            try:
                _zero(fd, end.offset, max(end.offset, cut_in.size))
                os.fdatasync(fd)
            finally:
                os.close(fd)
        for seg in self.segments[later:]:
            os.replace(seg.path, os.path.join(moved, os.path.basename(seg.path)))
            end.lost_segments += 1
        fsync_dir(moved)
        fsync_dir(self.path)
        end.moved_to = moved

    # ------------------------------------------------------------ writing
    def start(self, next_seq: int | None = None) -> None:
        """Open the active segment for appends (a new one when there is none, or at
        ``next_seq`` when the store says the journal starts over there: :meth:`reset`),
        and start the thread that prepares the next segment ahead of need."""
        if self.end is None:
            raise StoreError("journal: recover() before start()")
        self._thread = threading.Thread(target=self._spares, name="zmesh-journal-spare", daemon=True)
        self._thread.start()
        if next_seq is not None and next_seq != self._next:
            self.reset(next_seq)
        elif not self.segments:
            self._activate(self._next, 0)
        else:
            seg = self.segments[-1]
            self._fd = os.open(seg.path, os.O_RDWR)
            self._pos, self._cap = self.end.offset, seg.size
            self._ask_ahead()

    @property
    def next_seq(self) -> int:
        return self._next

    @property
    def last_seq(self) -> int:
        return self._next - 1

    def append(self, payload: bytes) -> int:
        """Write one record (no sync); returns its seq."""
        seq = self._next
        size = RECORD_HEAD + len(payload)
        if self._pos + size > self._cap and self._pos > HEADER:
            self._switch()
        os.pwritev(self._fd, [_REC.pack(len(payload), _crc(seq, payload), seq), payload], self._pos)
        self._last_at = self._pos
        self._pos += size
        self.written_bytes += size
        self._next = seq + 1
        if self._pos > self._ahead_at:
            self._ask_ahead()
        return seq

    def _ask_ahead(self) -> None:
        """Past half the active segment: the next one is prepared now (ramping up from
        :data:`FIRST_SEGMENT_BYTES` to ``segment_bytes``, so a small store stays small)."""
        self._ahead_at = self._cap // 2 if self._pos <= self._cap // 2 else 1 << 62
        if self._pos > self._cap // 2:
            with self._spare_cond:
                if not self._spare_ready and not self._spare_wanted:
                    self._spare_wanted = min(self.segment_bytes, max(FIRST_SEGMENT_BYTES, 2 * self._cap))
                    self._spare_cond.notify_all()

    def rewind(self, seq: int) -> None:
        """Undo the last append (its commit failed): zero it, so it is never replayed."""
        if seq != self._next - 1 or self._last_at is None:
            raise StoreError(f"journal: rewind of {seq}, but the last record is {self._next - 1}")
        with self._sync_lock:
            _zero(self._fd, self._last_at, self._pos)
            os.fdatasync(self._fd)
        self._pos, self._next, self._last_at = self._last_at, seq, None
        self.synced = min(self.synced, seq - 1)

    def sync(self) -> int:
        """fdatasync the active segment; returns the seq the disk now has up to."""
        with self._sync_lock:
            upto = self._next - 1
            if upto > self.synced:
                started = time.perf_counter()
                os.fdatasync(self._fd)
                self.flush_seconds += time.perf_counter() - started
                self.flushes += 1
                self.synced = upto
            return self.synced

    def on_disk(self) -> tuple[int, int]:
        """(segments on disk, their bytes, preallocated space included)."""
        return len(self.segments), sum(seg.size for seg in self.segments)

    def _switch(self) -> None:
        """The active segment is full: sync and close it, put the spare in its place."""
        with self._sync_lock:
            os.fdatasync(self._fd)
            self.synced = self._next - 1
            os.close(self._fd)
            self._fd = -1
        self._activate(self._next, self.segments[-1].index + 1)

    def _activate(self, first_seq: int, index: int) -> None:
        """The spare, headed with ``first_seq``, becomes segment ``index`` (made here
        when none is ready or on the way: the first segment, or a writer that outran it)."""
        waited = time.monotonic()
        spare = os.path.join(self.path, SPARE)
        with self._spare_cond:
            if not self._spare_ready and not self._spare_wanted:
                self._make_spare(spare, min(self.segment_bytes, FIRST_SEGMENT_BYTES if not self.segments else self.segment_bytes))
                self._spare_ready = True
            while not self._spare_ready:
                self._spare_cond.wait(1.0)
            self._spare_ready = False
            fd = os.open(spare, os.O_RDWR)
            head = _SEG.pack(MAGIC, VERSION, first_seq, 0)
            head = _SEG.pack(MAGIC, VERSION, first_seq, crc32c(head[:20]))
            os.pwrite(fd, head, 0)
            os.fdatasync(fd)
            path = os.path.join(self.path, _name(index))
            os.replace(spare, path)
            fsync_dir(self.path)
        took = time.monotonic() - waited
        if took > _SLOW_SPARE_S and self.segments:
            log.warning("journal: waited %.0f ms for a preallocated segment (the disk is slow or busy)",
                        took * 1000, extra={"event": "journal.slow_spare", "ms": round(took * 1000, 1)})
        size = os.fstat(fd).st_size
        self.segments.append(Segment(index, first_seq, path, size))
        self._fd, self._pos, self._cap = fd, HEADER, size
        self._ahead_at = size // 2

    def _spares(self) -> None:
        """Prepare the spare when asked: a retired segment zeroed, or a new file."""
        spare = os.path.join(self.path, SPARE)
        while True:
            with self._spare_cond:
                while not self._spare_wanted and not self._stopping:
                    self._spare_cond.wait()
                if self._stopping:
                    return
                size = self._spare_wanted
            try:
                self._make_spare(spare, size)
            except OSError as exc:
                log.error("journal: cannot prepare a segment in %s: %s (retrying)", self.path, exc,
                          extra={"event": "journal.spare_failed", "error": str(exc)})
                with self._spare_cond:
                    self._spare_cond.wait(1.0)
                continue
            with self._spare_cond:
                self._spare_ready = True
                self._spare_wanted = 0
                self._spare_cond.notify_all()

    def _make_spare(self, spare: str, size: int) -> None:
        partial = spare + ".partial"
        retired = sorted(e for e in os.listdir(self.path) if e.endswith(".retired"))
        if retired:
            os.replace(os.path.join(self.path, retired[0]), partial)
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, size)
            _zero(fd, 0, size)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(partial, spare)
        fsync_dir(self.path)

    # ------------------------------------------------------------ checkpoints
    def retire(self, upto: int) -> int:
        """Retire every segment all of whose records have seqs <= ``upto`` (a checkpoint
        holds them), never the active one; returns how many. Kept for recycling: one
        retired file waits to become the next spare, more are deleted."""
        done = 0
        while len(self.segments) > 1 and self.segments[1].first_seq - 1 <= upto:
            seg = self.segments.pop(0)
            waiting = [e for e in os.listdir(self.path) if e.endswith(".retired")]
            if waiting:
                os.unlink(seg.path)
            else:
                os.replace(seg.path, seg.path + ".retired")
            done += 1
        if done:
            fsync_dir(self.path)
        return done

    def reset(self, next_seq: int) -> None:
        """Start over at ``next_seq`` (the store's state, checkpointed, is ahead of the
        journal): every segment is retired and a new one begins there."""
        if self._fd >= 0:
            with self._sync_lock:
                os.close(self._fd)
                self._fd = -1
        index = self.segments[-1].index + 1 if self.segments else 0
        for seg in self.segments:
            os.replace(seg.path, seg.path + ".retired")
        self.segments = []
        fsync_dir(self.path)
        self._next = next_seq
        self.synced = next_seq - 1
        self._activate(next_seq, index)

    def close(self) -> None:
        with self._spare_cond:
            self._stopping = True
            self._spare_cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._sync_lock:
            if self._fd >= 0:
                os.fdatasync(self._fd)
                self.synced = self._next - 1
                os.close(self._fd)
                self._fd = -1
