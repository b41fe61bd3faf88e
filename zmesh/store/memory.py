"""The memory store: the store interface over dicts, for tests and the core benchmark.

Rules it keeps: one dict per table (so a table's scan never runs into another's keys), ordered
scans, a write transaction's changes applied only when it leaves without an exception, its
commit hooks run first; nothing on disk, so no durability and no backup.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from ..core.schema import TABLE_NAMES
from ..errors import StoreError


class MemoryTxn:
    """One transaction over the store's dicts: a table is copied on its first write."""

    def __init__(self, tables: dict[str, dict[bytes, bytes]], write: bool) -> None:
        self._base = tables
        self._mine: dict[str, dict[bytes, bytes]] = {}
        self._write = write
        self.dirty = False
        self.hooks: list[Callable[[], None]] = []

    def before_commit(self, hook: Callable[[], None]) -> None:
        self.dirty = True
        self.hooks.append(hook)

    def _t(self, table: str, for_write: bool = False) -> dict[bytes, bytes]:
        if table in self._mine:
            return self._mine[table]
        if for_write:
            if not self._write:
                raise StoreError("write in a read transaction")
            self._mine[table] = dict(self._base[table])
            return self._mine[table]
        return self._base[table]

    def get(self, table: str, key: bytes) -> bytes | None:
        return self._t(table).get(key)

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self.dirty = True
        self._t(table, True)[bytes(key)] = bytes(value)

    def delete(self, table: str, key: bytes) -> bool:
        self.dirty = True
        return self._t(table, True).pop(key, None) is not None

    def scan(self, table: str, start: bytes = b"", prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        data = self._t(table)
        first = max(start, prefix)
        for key in sorted(k for k in data if k >= first):
            if prefix and not key.startswith(prefix):
                return
            if key in data:
                yield key, data[key]

    def scan_back(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        data = self._t(table)
        for key in sorted((k for k in data if k.startswith(prefix)), reverse=True):
            if key in data:
                yield key, data[key]


class MemoryStore:
    """Same semantics as LmdbStore without a disk: for core tests and the core benchmark."""

    durability = "none"
    applied = 0  # no journal: nothing ever waits for a flush
    broken: str | None = None  # nothing on disk: nothing to fail
    recovery: dict[str, Any] = {}

    def durable(self) -> int:
        return 0

    def sync(self) -> int:
        return 0

    def pipeline(self, on_durable: Callable[[], None]) -> None:
        pass

    def sync_soon(self) -> None:
        pass

    def advertise(self, endpoints: list[str], pub: list[str]) -> None:
        pass

    def __init__(self) -> None:
        self.tables: dict[str, dict[bytes, bytes]] = {name: {} for name in TABLE_NAMES}
        self.broker_id = uuid.uuid4().hex

    @contextmanager
    def write(self) -> Iterator[MemoryTxn]:
        txn = MemoryTxn(self.tables, True)
        try:
            yield txn
            for hook in txn.hooks:
                hook()
            self.tables.update(txn._mine)
        finally:
            txn.hooks.clear()  # as LmdbStore: no cycle through the batch

    @contextmanager
    def read(self) -> Iterator[MemoryTxn]:
        yield MemoryTxn(self.tables, False)

    def usage(self) -> tuple[int, int]:
        """(bytes of keys and values held, 0: a memory store has no map)."""
        return sum(len(k) + len(v) for t in self.tables.values() for k, v in t.items()), 0

    def journal_figures(self) -> dict[str, int | float]:
        """{}: a memory store keeps no journal."""
        return {}

    def backup(self, dest: str) -> None:
        raise StoreError("a memory store has nothing on disk to back up")

    def close(self) -> None:
        pass
