"""Work the broker does beside its loop: a backup, LMDB's compacting copy taken while it serves.

Rules it keeps:

* One backup at a time: another one asked while a copy runs is ``conflict`` naming where
  the running one goes; the same request sent again (same request id: a client's retry)
  waits for the same copy.
* The copy is LMDB's own consistent copy (``mdb_env_copy2`` with ``MDB_CP_COMPACT``: free
  pages left out) in a read transaction that begins while the request's batch is applied,
  so every write acknowledged before the backup was asked is in it (acknowledged writes
  were committed first). It runs in a thread (LMDB copies without the GIL: the loop goes on
  serving) and writes only into DEST, which must be an absolute path on the broker's host
  that does not exist yet or is an empty directory; it is made 0700.
* With ``keys`` (the default) the broker's keys go with the data, into DEST/keys: its key
  pair (``broker.key_secret``, 0600, and ``broker.key``) and the public half of every client
  key its allow-list admits (``authorized/`` and its role directories), so a restored secure
  broker keeps the identity its clients pinned and admits the same clients. A client's
  secret is never copied. A broker that never ran secure has none: DEST/keys is not made.
* Replies go out from the loop, never from the thread (the sockets are the loop's): the
  thread leaves its answer in a queue and wakes the loop.
* The store is not closed under a running copy: :meth:`Backups.wait` joins it first.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from .. import protocol
from ..core import DEFERRED, Batch
from ..errors import BadRequest, Conflict, Internal, RemoteError
from ..transport.keys import copy_allowed, copy_pair
from ..store import Store

log = logging.getLogger("zmesh.broker")

#: the file LMDB writes in a copy's directory
DATA_FILE = "data.mdb"
#: where a backup keeps the keys (``keys``): the directory, the pair in it, the allow-list in it
KEYS_DIR = "keys"
BACKUP_PAIR = "broker.key_secret"
BACKUP_ALLOWED = "authorized"


class _Job:
    __slots__ = ("dest", "keys", "req_id", "seq", "waiters", "thread", "started")

    def __init__(self, dest: str, keys: bool, req_id: bytes, seq: int) -> None:
        self.dest = dest
        self.keys = keys
        self.req_id = req_id
        self.seq = seq
        self.waiters: list[tuple[Any, bytes]] = []  # (router, ident) owed the answer
        self.thread: threading.Thread | None = None
        self.started = time.monotonic()


class Backups:
    """The broker's backups: started from a request (``extend``), answered from the loop (``replies``)."""

    def __init__(self, store: Store, broker_id: str, wake: Callable[[], None],
                 keys: tuple[Path, Path] | None = None) -> None:
        self._store = store
        #: (the broker's key pair file, its allow-list directory): what ``keys`` copies
        self._keys = keys
        self._broker_id = broker_id
        self._wake = wake
        self._running: _Job | None = None
        self._done: deque[tuple[_Job, dict[str, Any] | RemoteError]] = deque()

    def extend(self, b: Batch, body: dict[str, Any], item: Any) -> Any:
        """The core checked the caller (an admin op) and answered {dest, seq}: start the
        copy, or join the running one when this is its retry; the reply is owed (DEFERRED)."""
        dest = body["dest"]
        job = self._running
        if job is not None:
            if job.req_id != item.req.req_id:
                raise Conflict(f"a backup to {job.dest} is running (started "
                               f"{time.monotonic() - job.started:.1f} s ago); ask again when it is done",
                               {"field": "dest", "running": job.dest})
        else:
            check_dest(dest)
            job = self._running = _Job(dest, body.get("keys", True), item.req.req_id, body["seq"])
            job.thread = threading.Thread(target=self._copy, args=(job,), name="zmesh-backup", daemon=True)
            job.thread.start()
            log.info("backup to %s started (every write acknowledged up to event seq %d is in it)", dest,
                     body["seq"], extra={"event": "backup.started", "dest": dest, "seq": body["seq"]})
        if (item.router, item.ident) not in job.waiters:
            job.waiters.append((item.router, item.ident))
        return DEFERRED

    def _copy(self, job: _Job) -> None:
        """In the job's thread: the copy, then its answer queued for the loop."""
        result: dict[str, Any] | RemoteError
        try:
            os.makedirs(job.dest, mode=0o700, exist_ok=True)
            self._store.backup(job.dest)
            size = os.path.getsize(os.path.join(job.dest, DATA_FILE))
            keys = None
            if job.keys and self._keys is not None:
                pair, allowed = self._keys
                out = Path(job.dest, KEYS_DIR)
                keys = {"broker_key": copy_pair(pair, out / BACKUP_PAIR),
                        "authorized": copy_allowed(allowed, out / BACKUP_ALLOWED)}
                if keys["broker_key"] is None and not keys["authorized"]:
                    try:
                        out.rmdir()  # made by nothing: a broker that never ran secure
                    except OSError:
                        pass
            took = time.monotonic() - job.started
            result = {"dest": job.dest, "bytes": size, "seconds": round(took, 3), "broker_id": self._broker_id,
                      "seq": job.seq, "keys": keys}
            log.info("backup to %s done: %d bytes in %.3f s%s", job.dest, size, took,
                     "" if keys is None else f"; keys: broker key {keys['broker_key'] or 'none'}, "
                     f"{keys['authorized']} client key(s)",
                     extra={"event": "backup.done", "dest": job.dest, "bytes": size, "seconds": round(took, 3),
                            "keys": keys})
        except Exception as exc:  # the disk's trouble (full, permissions): said to the caller and the log
            result = Internal(f"backup to {job.dest} failed: {exc}", {"field": "dest"})
            log.warning("backup to %s failed: %s", job.dest, exc,
                        extra={"event": "backup.failed", "dest": job.dest, "error": str(exc)})
        self._done.append((job, result))
        self._wake()

    def replies(self) -> list[tuple[Any, list[bytes]]]:
        """(router, frames) for every answer a finished copy owes; called from the loop."""
        out: list[tuple[Any, list[bytes]]] = []
        while self._done:
            job, result = self._done.popleft()
            frames = (protocol.encode_error(job.req_id, result) if isinstance(result, RemoteError)
                      else protocol.encode_reply(job.req_id, result))
            out.extend((router, [ident, *frames]) for router, ident in job.waiters)
            if self._running is job:
                self._running = None
        return out

    def wait(self) -> None:
        """Before the store closes: a running copy finishes first (its answer is lost with the
        sockets; the copy itself is whole)."""
        job = self._running
        if job is not None and job.thread is not None and job.thread.is_alive():
            log.info("waiting for the backup to %s to finish before closing the store", job.dest)
            job.thread.join()


#: the longest DEST taken, in bytes (PATH_MAX on Linux)
MAX_DEST_BYTES = 4096


def check_dest(dest: str) -> None:
    """DEST is a path (no control characters, at most MAX_DEST_BYTES), absolute, its parent a
    directory, and it is new or an empty directory."""
    if protocol.CONTROL_CHARS.search(dest) or len(dest.encode()) > MAX_DEST_BYTES:
        raise BadRequest(f"dest {protocol.escape_controls(dest[:80])!r} is not a path: no control characters, "
                         f"at most {MAX_DEST_BYTES} bytes", {"field": "dest"})
    if not os.path.isabs(dest):
        raise BadRequest(f"dest {dest!r} is not an absolute path (it names a place on the broker's host)",
                         {"field": "dest"})
    if os.path.exists(dest):
        if not os.path.isdir(dest):
            raise BadRequest(f"dest {dest} exists and is not a directory", {"field": "dest"})
        if os.listdir(dest):
            raise BadRequest(f"dest {dest} is not empty: a backup goes into a new or empty directory",
                             {"field": "dest"})
    elif not os.path.isdir(os.path.dirname(dest.rstrip("/")) or "/"):
        raise BadRequest(f"dest {dest}: its parent directory does not exist", {"field": "dest"})
