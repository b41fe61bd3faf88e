"""The LMDB store's transactions: the core's :class:`~zmesh.store.base.Txn` over one LMDB
transaction, and the ``with store.write()`` block that journals and commits it.

Rules it keeps:

* Every table lives in LMDB's main database under its prefix byte (core/schema.py owns the
  layout); a scan never runs into the next table, nor into a table nested in its range.
* Every put and delete is also kept in ``changes`` (the whole key -> its value now, None:
  deleted): that is the batch's journal record (redo.py), so nothing reaches LMDB that the
  journal does not have.
* A block that returns commits (through :meth:`LmdbStore._commit`) if something changed,
  after its ``before_commit`` hooks; one that raises, or changed nothing, is aborted. LMDB's
  own failures leave as the store's: a full map grows and says apply again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator

import lmdb

from ..core.schema import NESTED, PREFIXES
from ..errors import StoreError
from .base import StoreFull

if TYPE_CHECKING:
    from .lmdb import LmdbStore

#: the tables and their fixed key prefixes: the layout is owned by core/schema.py
_PREFIX = PREFIXES
#: table -> where a scan of it ends: the first key of a table nested in its range (which
#: sorts after every key of its own)
_NESTED_AT = {outer: PREFIXES[name] for name, (outer, _sub) in NESTED.items()}


class LmdbTxn:
    __slots__ = ("_txn", "dirty", "hooks", "changes")

    def __init__(self, txn: lmdb.Transaction) -> None:
        self._txn = txn
        self.dirty = False
        self.hooks: list[Callable[[], None]] = []
        #: whole key -> its value now, None: deleted (the journal record's change set)
        self.changes: dict[bytes, bytes | None] = {}

    def before_commit(self, hook: Callable[[], None]) -> None:
        self.dirty = True
        self.hooks.append(hook)

    # the environment is opened without buffers, so LMDB hands out bytes (its stubs also allow
    # memoryview): the ignores below say so without a cast call on the hot path
    def get(self, table: str, key: bytes) -> bytes | None:
        return self._txn.get(_PREFIX[table] + key)  # type: ignore[return-value]

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self.dirty = True
        full = _PREFIX[table] + key
        try:
            self._txn.put(full, value)
        except lmdb.MapFullError:
            raise StoreFull("LMDB map is full") from None
        self.changes[full] = value

    def delete(self, table: str, key: bytes) -> bool:
        self.dirty = True
        full = _PREFIX[table] + key
        try:
            gone = self._txn.delete(full)
        except lmdb.MapFullError:
            raise StoreFull("LMDB map is full") from None
        if gone:
            self.changes[full] = None
        return gone

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
                    self._store._commit(txn, wrapped.changes)
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
            raise self._store._grown() from None
        if isinstance(exc, lmdb.Error):
            raise StoreError(f"LMDB write failed in {self._store.path}: {exc}") from exc


