"""The store interface: what the core and the broker may ask of storage. No I/O here.

Rules it keeps:

* The core sees only :class:`Txn`: ordered byte tables with get/put/delete/scan inside one
  transaction. That is all the state machine needs, and it is what a later store on a
  distributed engine (an etcd cluster: txn for CAS) must provide, so core semantics never
  depend on LMDB.
* The broker sees :class:`Store`: one write transaction per batch, read transactions,
  usage, backup, close. The broker is given a store (``Broker(config, store=...)``); the
  LMDB store is the default (lmdb.py), the memory store serves tests and the core bench
  (memory.py).
* A write transaction that changed nothing is aborted instead of committed, so read-only
  and heartbeat-only batches never touch the disk.
* Durability levels (one name, stated beside every benchmark figure; what each costs is the
  LMDB store's docstring): ``full``, ``fast``, ``none``.
"""

from __future__ import annotations

from typing import Any, Callable, ContextManager, Iterator, Protocol

from ..errors import StoreError

DURABILITY = ("full", "fast", "none")

class StoreFull(StoreError):
    """The transaction did not fit; the store grew and nothing was written: apply again."""


class Txn(Protocol):
    """What the core may do inside one transaction."""

    def get(self, table: str, key: bytes) -> bytes | None: ...

    def put(self, table: str, key: bytes, value: bytes) -> None: ...

    def delete(self, table: str, key: bytes) -> bool: ...

    def before_commit(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` when the transaction is about to commit (never on an abort); the
        transaction counts as changed, so it commits."""
        ...

    def scan(self, table: str, start: bytes = b"", prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Ascending (key, value) pairs from ``start`` while keys begin with ``prefix``."""
        ...

    def scan_back(self, table: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Descending (key, value) pairs of the keys that begin with ``prefix``."""
        ...


class Store(Protocol):
    """What the broker needs of a store: the LMDB store today, a distributed one later."""

    durability: str
    broker_id: str
    @property
    def applied(self) -> int:
        """The journal seq of the last write committed (0: a store without a journal)."""
        ...
    #: what opening the store found and did, for the broker's recovery line ({}: nothing to tell)
    recovery: dict[str, Any]

    @property
    def broken(self) -> str | None:
        """Why the store takes no more writes (a failed flush; a replica deposed), or None:
        the broker stops when it is set."""
        ...

    def durable(self) -> int:
        """The seq up to which a reply may leave: at ``full`` what the disk has (fdatasynced),
        at ``fast`` and ``none`` every write committed (their replies wait for no flush)."""
        ...

    def sync(self) -> int:
        """Flush now, in the caller's thread; returns :meth:`durable`."""
        ...

    def pipeline(self, on_durable: Callable[[], None]) -> None:
        """From now on a ``full`` write returns before its flush: the caller holds its
        replies until :meth:`durable` covers them, asks for the flush with :meth:`sync_soon`
        (or does it with :meth:`sync`), and ``on_durable`` is called (from another thread)
        after each background flush."""
        ...

    def sync_soon(self) -> None:
        """A flush in the store's own thread (``on_durable`` says when it is done)."""
        ...

    def advertise(self, endpoints: list[str], pub: list[str]) -> None:
        """Where this broker serves, once bound: a replicated store puts it in the mesh's
        leader key (so a standby or a client can name the active broker); others ignore it."""
        ...

    def write(self) -> ContextManager[Txn]: ...

    def read(self) -> ContextManager[Txn]: ...

    def usage(self) -> tuple[int, int]:
        """(bytes in use, the map's size): what health and the near-full warning read."""
        ...

    def journal_figures(self) -> dict[str, int | float]:
        """The journal's figures for the metrics ({}: a store without a journal)."""
        ...

    def backup(self, dest: str) -> None:
        """A consistent, compacted copy of the data into the directory ``dest`` (safe from
        another thread while transactions run)."""
        ...

    def close(self) -> None: ...


