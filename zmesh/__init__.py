"""zmesh: real-time coordination for software agents on a LAN (ZeroMQ + LMDB)."""

from __future__ import annotations

__version__ = "0.1.0"

from .client import AsyncClient, Claim, Client, Roster  # noqa: E402

# the wire's main records (TypedDicts: the results stay plain dicts); every reply shape is
# in zmesh.protocol.records
from .protocol.records import Agent, Blocker, Delivery, Reservation, StoredMessage, Task  # noqa: E402
from .errors import (  # noqa: E402
    BadRequest,
    ClaimExpired,
    ConfigError,
    Conflict,
    Internal,
    InvalidArgument,
    LeaseExpired,
    NotFound,
    NothingToClaim,
    NotOwner,
    Forbidden,
    ProtocolError,
    RemoteError,
    SnapshotRequired,
    StaleToken,
    StoreError,
    TooLarge,
    UnknownOp,
    Unreachable,
    UnsupportedVersion,
    UsageError,
    ZmeshError,
)

__all__ = [
    "__version__",
    "Client",
    "AsyncClient",
    "Claim",
    "Roster",
    "Task",
    "Agent",
    "Blocker",
    "Reservation",
    "StoredMessage",
    "Delivery",
    "ZmeshError",
    "InvalidArgument",
    "ConfigError",
    "UsageError",
    "RemoteError",
    "BadRequest",
    "UnknownOp",
    "UnsupportedVersion",
    "TooLarge",
    "NotFound",
    "Conflict",
    "NotOwner",
    "Forbidden",
    "StaleToken",
    "LeaseExpired",
    "ClaimExpired",
    "SnapshotRequired",
    "Internal",
    "NothingToClaim",
    "Unreachable",
    "ProtocolError",
    "StoreError",
]
