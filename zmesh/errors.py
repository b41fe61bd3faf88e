"""One exception tree for the whole package, and the wire error codes it maps to.

::

    ZmeshError                      every error zmesh raises (``code`` is stable)
    ├── InvalidArgument             invalid_argument: a local argument (endpoint, option, value)
    │   ├── ConfigError             config: a config file key or ZMESH_* variable is invalid
    │   └── UsageError              usage: the command line is malformed (CLI only)
    ├── RemoteError                 the broker refused a request (carries its wire code); the
    │   │                           client refuses the same requests itself before sending
    │   ├── BadRequest              bad_request: malformed frames, bad JSON, wrong field type
    │   ├── UnknownOp               unknown_op: the broker does not know this op
    │   ├── UnsupportedVersion      unsupported_version: protocol version mismatch
    │   ├── TooLarge                too_large: message or field above a limit
    │   ├── NotFound                not_found: no such task / agent
    │   ├── Conflict                conflict: lost a race, task not claimable, already exists
    │   ├── NotOwner                not_owner: the agent does not hold this claim
    │   ├── Forbidden               forbidden: the connection's role may not run this op
    │   ├── StaleToken              stale_token: the fencing token is not the current one
    │   ├── LeaseExpired            lease_expired: the agent's lease lapsed (claims released)
    │   ├── ClaimExpired            claim_expired: the claim's own TTL lapsed (task released)
    │   ├── SnapshotRequired        snapshot_required: replay asked for trimmed events
    │   └── Internal                internal: a broker bug; the broker keeps running
    ├── NothingToClaim              nothing_to_claim: no available task matches (CLI ``task next``)
    ├── Unreachable                 unreachable: no reply from the broker within the timeout
    ├── UntrustedBroker             untrusted_broker: a discovered broker's key is not the pinned one
    ├── ProtocolError               protocol: the broker's reply could not be understood
    ├── StoreError                  store: the data directory cannot be opened or used
    └── BindError                   bind: the broker cannot bind an endpoint (address in use)

Every error has a one-line message, a stable ``code`` and ``details`` (a dict: which field,
which holder, which limit). ``details["field"]`` names the request field, option or config
key at fault wherever there is one.

Remote errors are translated at the client boundary from their wire code (``code``) with
:func:`from_wire`; ``zmq.ZMQError`` and ``lmdb.Error`` never escape the public API.
The CLI maps the tree onto exit codes with :data:`EXIT_CODES`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
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
    "NoReply",
    "Unreachable",
    "UntrustedBroker",
    "ProtocolError",
    "StoreError",
    "BindError",
    "WIRE_ERRORS",
    "from_wire",
    "exit_code",
]


class ZmeshError(Exception):
    """Base of every zmesh error. ``code`` is stable and safe to match on in scripts."""

    code = "error"
    #: what the error means, for docs/PROTOCOL.md (generated from this tree)
    meaning = "any zmesh error"

    def __init__(self, message: str = "", details: dict[str, Any] | None = None) -> None:
        super().__init__(message or self.meaning)
        self.message = message or self.meaning
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class InvalidArgument(ZmeshError):
    """Refused before anything was sent: an endpoint, argument or option is invalid."""

    code = "invalid_argument"
    meaning = "an argument, endpoint or option given to zmesh is invalid"


class ConfigError(InvalidArgument):
    code = "config"
    meaning = "a config file key or ZMESH_* environment variable is invalid"


class UsageError(InvalidArgument):
    code = "usage"
    meaning = "the command line is malformed: unknown option, missing argument, bad value"


class RemoteError(ZmeshError):
    """An error the broker answered with; ``code`` is the wire code."""

    code = "remote"
    meaning = "the broker refused the request"


class BadRequest(RemoteError):
    code = "bad_request"
    meaning = "malformed frames, invalid JSON, a missing field or a field of the wrong type"


class UnknownOp(RemoteError):
    code = "unknown_op"
    meaning = "the op name is not one the broker knows"


class UnsupportedVersion(RemoteError):
    code = "unsupported_version"
    meaning = "the request's protocol version is not one the broker speaks"


class TooLarge(RemoteError):
    code = "too_large"
    meaning = "the message, a frame or a field is above its limit"


class NotFound(RemoteError):
    code = "not_found"
    meaning = "no such task or agent"


class Conflict(RemoteError):
    code = "conflict"
    meaning = "the task is held by another agent, not claimable in its state, or already exists"


class NotOwner(RemoteError):
    code = "not_owner"
    meaning = "the agent does not hold the claim it acts on"


class Forbidden(RemoteError):
    code = "forbidden"
    meaning = ("the connection's key has a role that may not run this op (an observer writing, "
               "an admin op from a non-admin); the refusal is audited")


class StaleToken(RemoteError):
    code = "stale_token"
    meaning = "the fencing token is not the claim's current token"


class LeaseExpired(RemoteError):
    code = "lease_expired"
    meaning = "the agent's lease lapsed or was replaced; its claims were released"


class ClaimExpired(RemoteError):
    code = "claim_expired"
    meaning = "the claim's own TTL lapsed and the task was released; claim it again"


class SnapshotRequired(RemoteError):
    code = "snapshot_required"
    meaning = "replay asked for events already trimmed from the log; take a snapshot"


class Internal(RemoteError):
    code = "internal"
    meaning = "the broker hit a bug handling this request; the broker keeps running"


class NothingToClaim(ZmeshError):
    code = "nothing_to_claim"
    meaning = "no available task matches the agent's capabilities"


class NoReply(ZmeshError):
    code = "no_reply"
    meaning = "an agent did not answer a request within its timeout (a late reply still arrives as a message)"


class Unreachable(ZmeshError):
    code = "unreachable"
    meaning = "the broker did not answer within the timeout"


class UntrustedBroker(ZmeshError):
    code = "untrusted_broker"
    meaning = ("a broker found by discovery has another key than the one pinned for its mesh (or none); "
               "the client refused it")


class ProtocolError(ZmeshError):
    code = "protocol"
    meaning = "a message from the broker could not be understood"


class StoreError(ZmeshError):
    code = "store"
    meaning = "the data directory cannot be opened or used"


class BindError(ZmeshError):
    code = "bind"
    meaning = "the broker cannot bind an endpoint (address in use, no such interface, permission)"


#: wire code -> exception class, for every error the broker may answer with
WIRE_ERRORS: dict[str, type[RemoteError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        UnknownOp,
        UnsupportedVersion,
        TooLarge,
        NotFound,
        Conflict,
        NotOwner,
        Forbidden,
        StaleToken,
        LeaseExpired,
        ClaimExpired,
        SnapshotRequired,
        Internal,
    )
}


def from_wire(body: Any) -> RemoteError:
    """Turn an error reply body into its exception (unknown codes stay RemoteError)."""
    if not isinstance(body, dict):
        return RemoteError(f"unreadable error reply: {body!r}")
    code = str(body.get("code", "remote"))
    message = str(body.get("message", ""))
    details = body.get("details") if isinstance(body.get("details"), dict) else None
    cls = WIRE_ERRORS.get(code)
    if cls is None:
        err = RemoteError(message, details)
        err.code = code
        return err
    return cls(message, details)


#: CLI exit codes: 1 refused or lost, 2 usage or invalid input (bad configuration too),
#: 3 broker unreachable
_EXIT_BY_CLASS: list[tuple[type[ZmeshError], int]] = [
    (InvalidArgument, 2),
    (Unreachable, 3),
    (BadRequest, 2),
    (UnknownOp, 2),
    (UnsupportedVersion, 2),
    (TooLarge, 2),
    (ProtocolError, 3),
    (StoreError, 1),
]


def exit_code(err: ZmeshError) -> int:
    for cls, code in _EXIT_BY_CLASS:
        if isinstance(err, cls):
            return code
    return 1
