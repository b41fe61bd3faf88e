"""Checkpoints and what a restart may trust: snapshots of the LMDB data, the boot id, the
clean-stop marker. Files in the data directory; the LMDB store (lmdb.py) decides when.

Rules it keeps:

* LMDB is written without sync (the journal is the durability of record), so its file is
  whole after a broker crash (the OS has every page) but not after an OS crash: LMDB reuses
  freed pages, and a page written after the last sync may or may not have reached the disk.
  So a restart trusts the LMDB file only when (:meth:`History.trust`):

  - the broker stopped cleanly (``clean`` marker: LMDB was synced at the stop), or
  - the machine did not restart since the broker ran (``boot_id`` matches
    /proc/sys/kernel/random/boot_id), or
  - the directory has never had a journal (data from a zmesh that synced LMDB itself).

  Otherwise it is rebuilt: the last snapshot copied into place, then the journal replayed.
* A snapshot is a compacted LMDB copy made in a read transaction (the writer goes on),
  fsynced, then renamed into place (``snapshot/``; the one before is ``snapshot.old/`` until
  the new one is whole), so a checkpoint interrupted at any point leaves a whole snapshot.
  Its journal seq is read in the same read transaction it copies.
* Journal segments are retired only after a snapshot that covers them is in place.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from typing import Callable

import lmdb

from ..core.schema import JOURNAL_SEQ, PREFIXES, U64
from .journal import fsync_dir

log = logging.getLogger("zmesh.store")

DATA_FILE = "data.mdb"
SNAPSHOT = "snapshot"
BOOT_FILE = "boot_id"
CLEAN_FILE = "clean"
JOURNAL_DIR = "journal"
SEQ_FILE = "seq"  # in a snapshot: the journal seq it holds
_SEQ_KEY = PREFIXES["meta"] + JOURNAL_SEQ


def current_boot_id() -> str:
    """This boot of the machine (Linux); elsewhere '' (never equal: rebuilds after every
    unclean stop, the safe side)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def applied_seq(txn: lmdb.Transaction) -> int:
    raw = txn.get(_SEQ_KEY)
    return 0 if raw is None else U64.unpack(raw)[0]


def _write_file(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def _fsync_tree(path: str) -> None:
    for entry in os.listdir(path):
        with open(os.path.join(path, entry), "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(path)


class History:
    """The files around the LMDB data that say what a restart may trust."""

    def __init__(self, path: str, boot_id: str) -> None:
        self.path = path
        self.boot_id = boot_id

    def _p(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def snapshot(self) -> str | None:
        """The snapshot in place (``snapshot.old`` when a checkpoint stopped between its
        renames), or None."""
        for name in (SNAPSHOT, SNAPSHOT + ".old"):
            if os.path.isfile(os.path.join(self._p(name), DATA_FILE)):
                return self._p(name)
        return None

    @property
    def snapshot_seq(self) -> int | None:
        """The journal seq the snapshot in place holds (None: no snapshot)."""
        snap = self.snapshot
        if snap is None:
            return None
        try:
            with open(os.path.join(snap, SEQ_FILE)) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None  # not whole: treated as none (a new one is taken)

    @property
    def journaled_before(self) -> bool:
        """A broker has run here with a journal (its boot was recorded)."""
        return os.path.exists(self._p(BOOT_FILE))

    def trust(self) -> tuple[bool, str]:
        """(may the LMDB file be used as it is, why)."""
        if os.path.exists(self._p(CLEAN_FILE)):
            return True, "the broker stopped cleanly"
        try:
            with open(self._p(BOOT_FILE)) as f:
                last_boot = f.read().strip()
        except FileNotFoundError:
            last_boot = None
        if last_boot is None:
            journal = self._p(JOURNAL_DIR)
            if not os.path.isdir(journal) or not any(e.endswith(".wal") for e in os.listdir(journal)):
                return True, "no journal yet"
            return False, "the boot id file is missing"
        if last_boot and last_boot == self.boot_id:
            return True, "same boot: the OS kept every page"
        return False, "the machine restarted since the broker last ran, and it did not stop cleanly"

    def set_aside(self, suffix: str) -> list[str]:
        """Rename the journal, the snapshots and the markers (``NAME + suffix``): the LMDB
        file was replaced by another's (a restore), whose history they are not. Returns
        what was moved."""
        moved = []
        for name in (JOURNAL_DIR, SNAPSHOT, SNAPSHOT + ".old", SNAPSHOT + ".tmp", BOOT_FILE, CLEAN_FILE):
            if os.path.exists(self._p(name)):
                os.replace(self._p(name), self._p(name + suffix))
                moved.append(name + suffix)
        if moved:
            fsync_dir(self.path)
        return moved

    def rebuild(self, why: str) -> str:
        """Put the last snapshot in place of the LMDB file (the file there is kept, renamed);
        returns what was done, for the log."""
        data = self._p(DATA_FILE)
        suspect = data + ".suspect"
        if os.path.exists(data):
            os.replace(data, suspect)
        try:  # the reader table of the file set aside
            os.unlink(self._p("lock.mdb"))
        except FileNotFoundError:
            pass
        snap = self.snapshot
        if snap is None:
            fsync_dir(self.path)
            done = f"no snapshot: rebuilding from the journal alone ({why})"
        else:
            tmp = data + ".rebuilding"
            shutil.copyfile(os.path.join(snap, DATA_FILE), tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, data)
            fsync_dir(self.path)
            done = f"rebuilt from {os.path.basename(snap)}/ ({why})"
        log.warning("store: LMDB file not trusted: %s; the file that was there is kept as %s", done,
                    os.path.basename(suspect), extra={"event": "store.rebuilt", "why": why,
                                                      "snapshot": snap})
        return done

    def running(self) -> None:
        """The broker serves from here on: its boot is recorded, the clean marker removed."""
        _write_file(self._p(BOOT_FILE), self.boot_id + "\n")
        try:
            os.unlink(self._p(CLEAN_FILE))
            fsync_dir(self.path)
        except FileNotFoundError:
            pass

    def stopped_cleanly(self, seq: int) -> None:
        """LMDB was synced at ``seq`` and nothing writes after: the next start trusts it."""
        _write_file(self._p(CLEAN_FILE), f"{seq}\n")

    def snapshot_now(self, env: lmdb.Environment) -> int:
        """A snapshot of the data as it is now; returns its journal seq. Safe while the
        writer goes on (its own read transaction)."""
        tmp = self._p(SNAPSHOT + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        txn = env.begin(write=False)
        try:
            seq = applied_seq(txn)
            env.copy(tmp, compact=True, txn=txn)
        finally:
            txn.abort()
        _write_file(os.path.join(tmp, SEQ_FILE), f"{seq}\n")
        _fsync_tree(tmp)
        snap, old = self._p(SNAPSHOT), self._p(SNAPSHOT + ".old")
        if os.path.isdir(snap):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(snap, old)
        os.replace(tmp, snap)
        fsync_dir(self.path)
        shutil.rmtree(old, ignore_errors=True)
        return seq


class Checkpointer:
    """A background thread that takes a snapshot when asked and hands its seq to
    ``done`` (which retires the journal's covered segments in the writer's thread)."""

    def __init__(self, history: History, env: lmdb.Environment, done: Callable[[int], None]) -> None:
        self._history = history
        self._env = env
        self._done = done
        self._asked = threading.Event()
        self._stopping = False
        self.running = False  # a snapshot is being taken
        self.last_seq: int | None = None
        self.last_at: float | None = None
        self._thread = threading.Thread(target=self._run, name="zmesh-checkpoint", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._asked.set()

    def _run(self) -> None:
        while True:
            self._asked.wait()
            self._asked.clear()
            if self._stopping:
                return
            self.running = True
            started = time.monotonic()
            try:
                seq = self._history.snapshot_now(self._env)
            except (OSError, lmdb.Error) as exc:
                log.error("store: checkpoint failed (%s); the journal keeps every record until one succeeds", exc,
                          extra={"event": "store.checkpoint_failed", "error": str(exc)})
                continue
            finally:
                self.running = False
            took = time.monotonic() - started
            self.last_seq, self.last_at = seq, time.time()
            log.info("store: checkpoint at journal seq %d in %.3f s", seq, took,
                     extra={"event": "store.checkpoint", "seq": seq, "seconds": round(took, 3)})
            self._done(seq)

    def close(self) -> None:
        self._stopping = True
        self._asked.set()
        self._thread.join()
