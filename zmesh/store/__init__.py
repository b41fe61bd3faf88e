"""Storage: the interface (base.py), the LMDB store (lmdb.py, the default) and a memory
store for tests (memory.py). ``from zmesh.store import ...`` names every one of them."""

from __future__ import annotations

from .base import DURABILITY, Store, StoreFull, Txn
from .lmdb import SCHEMA_VERSION, UPGRADES_IN_PLACE, LmdbStore, LmdbTxn
from .memory import MemoryStore, MemoryTxn

__all__ = ["DURABILITY", "Store", "StoreFull", "Txn", "SCHEMA_VERSION", "UPGRADES_IN_PLACE", "LmdbStore", "LmdbTxn",
           "MemoryStore", "MemoryTxn"]
