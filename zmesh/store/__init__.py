"""Storage: the interface (base.py), the LMDB store (lmdb.py, the default), a replica of the
mesh's log on etcd (replicated.py) and a memory store for tests (memory.py). ``from
zmesh.store import ...`` names every one of them; :func:`open_store` picks a broker's."""

from __future__ import annotations

from .base import DURABILITY, Store, StoreFull, Txn
from .lmdb import SCHEMA_VERSION, UPGRADES_IN_PLACE, LmdbStore, LmdbTxn
from .memory import MemoryStore, MemoryTxn


def open_store(data: str, *, durability: str, map_size: int, url: str = "", mesh: str = "default",
               leader_ttl: int = 5) -> Store:
    """The store a broker serves from: its own LMDB, or (``url`` etcd://...) one replica of
    the mesh's log on that etcd cluster."""
    if not url:
        return LmdbStore(data, durability=durability, map_size=map_size)
    from .etcd_kv import parse_endpoints
    from .replicated import ReplicatedStore

    return ReplicatedStore(data, endpoints=parse_endpoints(url), mesh=mesh, durability=durability,
                           leader_ttl=leader_ttl, map_size=map_size)

__all__ = ["DURABILITY", "Store", "StoreFull", "Txn", "SCHEMA_VERSION", "UPGRADES_IN_PLACE", "LmdbStore", "LmdbTxn",
           "MemoryStore", "MemoryTxn", "open_store"]
