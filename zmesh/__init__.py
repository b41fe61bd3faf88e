"""zmesh: real-time coordination for software agents on a LAN (ZeroMQ + LMDB)."""

from __future__ import annotations

__version__ = "0.1.0"

from .client import AsyncClient, Claim, Client  # noqa: E402
from .errors import (  # noqa: E402
    BadRequest,
    Conflict,
    Internal,
    LeaseExpired,
    NotFound,
    NotOwner,
    ProtocolError,
    RemoteError,
    SnapshotRequired,
    StaleToken,
    StoreError,
    TooLarge,
    UnknownOp,
    Unreachable,
    UnsupportedVersion,
    ZmeshError,
)

__all__ = [
    "__version__",
    "Client",
    "AsyncClient",
    "Claim",
    "ZmeshError",
    "RemoteError",
    "BadRequest",
    "UnknownOp",
    "UnsupportedVersion",
    "TooLarge",
    "NotFound",
    "Conflict",
    "NotOwner",
    "StaleToken",
    "LeaseExpired",
    "SnapshotRequired",
    "Internal",
    "Unreachable",
    "ProtocolError",
    "StoreError",
]
