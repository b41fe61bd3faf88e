"""The LMDB store (the default): one environment, one tree, a lock file, durability levels.

Durability levels (one name, stated beside every benchmark figure):

``full``  every commit synced, data pages then meta page (LMDB default): survives power loss.
``fast``  LMDB metasync off: one flush per commit; a system crash may undo the last
          commit, a broker crash loses nothing.
``none``  no sync: survives a broker crash (the OS still has the pages), not a system crash.

A write transaction that changed nothing is aborted instead of committed, so read-only
and heartbeat-only batches never touch the disk.

LMDB layout (schema 4): every table lives in LMDB's main database, its keys prefixed with
one byte per table. LMDB copies every page from the root to each leaf a commit touches,
and a named database adds its catalog entry's page: one tree with no catalog is the fewest
pages a commit can write, and a synced commit pays for each page (see bench/where.py).
Schema 2 and 3 data (a named database per table) is copied into this layout on open.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from contextlib import contextmanager
from typing import Callable, Iterator

import lmdb

from ..core.schema import NESTED, PREFIXES, TABLES
from ..errors import StoreError
from .base import DURABILITY, StoreFull, Txn  # noqa: F401  (Txn: the interface LmdbTxn keeps)

SCHEMA_VERSION = 4
#: older versions this zmesh upgrades on open: their data is copied into the current layout
#: (2 and 3 kept a named LMDB database per table; 2 -> 3 changed no records)
UPGRADES_IN_PLACE = frozenset({2, 3})

#: the tables and their fixed key prefixes: the layout is owned by core/schema.py
_PREFIX = PREFIXES
#: table -> where a scan of it ends: the first key of a table nested in its range (which
#: sorts after every key of its own)
_NESTED_AT = {outer: PREFIXES[name] for name, (outer, _sub) in NESTED.items()}


class LmdbTxn:
    __slots__ = ("_txn", "dirty", "hooks")

    def __init__(self, txn: lmdb.Transaction) -> None:
        self._txn = txn
        self.dirty = False
        self.hooks: list[Callable[[], None]] = []

    def before_commit(self, hook: Callable[[], None]) -> None:
        self.dirty = True
        self.hooks.append(hook)

    # the environment is opened without buffers, so LMDB hands out bytes (its stubs also allow
    # memoryview): the ignores below say so without a cast call on the hot path
    def get(self, table: str, key: bytes) -> bytes | None:
        return self._txn.get(_PREFIX[table] + key)  # type: ignore[return-value]

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self.dirty = True
        try:
            self._txn.put(_PREFIX[table] + key, value)
        except lmdb.MapFullError:
            raise StoreFull("LMDB map is full") from None

    def delete(self, table: str, key: bytes) -> bool:
        self.dirty = True
        try:
            return self._txn.delete(_PREFIX[table] + key)
        except lmdb.MapFullError:
            raise StoreFull("LMDB map is full") from None

    def scan(self, table: str, start: bytes = b"", prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        cur = self._txn.cursor()
        head = _PREFIX[table]
        within = head + prefix
        nested = _NESTED_AT.get(table)
        if not cur.set_range(head + max(start, prefix)):
            return
        cut = len(head)
        for key, value in cur:
            if not key.startswith(within) or (nested is not None and key.startswith(nested)):  # type: ignore[union-attr]
                return
            yield key[cut:], value  # type: ignore[misc]

    def scan_back(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        cur = self._txn.cursor()
        head = _PREFIX[table]
        within = head + prefix
        nested = _NESTED_AT.get(table)
        # a nested table is the end of its outer one's range: start before it
        past = nested if nested is not None and nested.startswith(within) else _past(within)
        if past is None or not cur.set_range(past):  # nothing after the range: start at the end
            if not cur.last():
                return
        elif not cur.prev():
            return
        cut = len(head)
        for key, value in cur.iterprev():
            if not key.startswith(within):  # type: ignore[union-attr]
                return
            yield key[cut:], value  # type: ignore[misc]


def _past(prefix: bytes) -> bytes | None:
    """The first key after every key that begins with ``prefix`` (None: there is none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))


class LmdbStore:
    """The embedded default. One process owns a data directory (an flock says so)."""

    def __init__(self, path: str | os.PathLike[str], *, durability: str = "full",
                 map_size: int = 1 << 33) -> None:
        if durability not in DURABILITY:
            raise StoreError(f"unknown durability '{durability}' (choose {', '.join(DURABILITY)})")
        self.path = os.fspath(path)
        self.durability = durability
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
        try:
            self.env = lmdb.open(
                self.path, map_size=map_size, max_dbs=len(TABLES) + 2, subdir=True,
                sync=durability != "none", metasync=durability == "full",
                readahead=False, max_readers=126,
            )
        except lmdb.Error as exc:
            self._lock.close()
            raise StoreError(f"cannot open LMDB in {self.path}: {exc}") from None
        self._page_size = self.env.stat()["psize"]
        for _ in range(20):  # an upgrade copies every record: the map may need to grow first
            try:
                self.broker_id = self._check_schema()
                break
            except StoreFull:
                continue
        else:  # pragma: no cover - 20 doublings of the map
            raise StoreError(f"cannot upgrade {self.path}: the LMDB map keeps filling up")

    def _check_schema(self) -> str:
        with self.write() as txn:
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

    def write(self) -> "_Write":
        """One write transaction: committed (and synced per durability) if the block
        returns and something changed, aborted otherwise."""
        return _Write(self)

    @contextmanager
    def read(self) -> Iterator[LmdbTxn]:
        txn = self.env.begin(write=False)
        try:
            yield LmdbTxn(txn)
        finally:
            txn.abort()

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
        self.env.close()
        self._lock.close()


class _Write:
    """``with store.write() as txn``: a plain class, not a generator context manager (the
    broker opens one per pass; contextlib's machinery cost a few µs each)."""

    __slots__ = ("_store", "_txn", "_wrapped")

    def __init__(self, store: LmdbStore) -> None:
        self._store = store

    def __enter__(self) -> LmdbTxn:
        self._txn = self._store.env.begin(write=True)
        self._wrapped = LmdbTxn(self._txn)
        return self._wrapped

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            self._finish(kind, exc)
        finally:
            # a hook usually holds the batch that holds this transaction: without this the
            # batch (its events, its replies) waits for the cyclic GC, many batches at once
            # under load (measured: 180 MB of events alive during an 8 KB publish flood)
            self._wrapped.hooks.clear()

    def _finish(self, kind: type[BaseException] | None, exc: BaseException | None) -> None:
        txn, wrapped = self._txn, self._wrapped
        if kind is None:
            try:
                for hook in wrapped.hooks:
                    hook()
                if wrapped.dirty:
                    txn.commit()
                else:
                    txn.abort()
            except BaseException as error:  # a hook or the commit failed
                txn.abort()
                self._translate(error)
                raise
            return
        txn.abort()
        self._translate(exc)  # else the block's own exception goes on as it is

    def _translate(self, exc: BaseException | None) -> None:
        """LMDB's failures as the store's: a full map grows and says apply again."""
        if isinstance(exc, (lmdb.MapFullError, StoreFull)):
            size = self._store.env.info()["map_size"] * 2
            self._store.env.set_mapsize(size)
            raise StoreFull(f"LMDB map was full; grown to {size} bytes: apply again") from None
        if isinstance(exc, lmdb.Error):
            raise StoreError(f"LMDB write failed in {self._store.path}: {exc}") from exc


