"""The public surface is pinned: what `import zmesh` offers (the clients, Claim, Roster, the
main record types of the wire, the errors), and that the sync and async clients are twins
with the same names (only close/aclose differ)."""

from __future__ import annotations

import inspect

import zmesh
from zmesh import AsyncClient, Client, errors


def test_exported_members() -> None:
    records = {"Task", "Agent", "Blocker", "Reservation", "StoredMessage", "Delivery"}  # TypedDicts of the wire
    expected = records | {"__version__", "Client", "AsyncClient", "Claim", "Roster", "ZmeshError", "RemoteError", "BadRequest",
                "UnknownOp", "UnsupportedVersion", "TooLarge", "NotFound", "Conflict", "NotOwner", "Forbidden",
                "StaleToken", "LeaseExpired", "SnapshotRequired", "Internal", "Unreachable",
                "ProtocolError", "StoreError", "InvalidArgument", "ConfigError", "UsageError",
                "ClaimExpired", "NothingToClaim"}
    assert set(zmesh.__all__) == expected
    for name in expected:
        assert hasattr(zmesh, name)


def test_every_error_is_a_zmesh_error_with_a_stable_code() -> None:
    classes = [getattr(zmesh, n) for n in zmesh.__all__
               if inspect.isclass(getattr(zmesh, n)) and issubclass(getattr(zmesh, n), Exception)]
    assert all(issubclass(cls, zmesh.ZmeshError) for cls in classes)
    codes = {cls.code for cls in classes}
    assert len(codes) == len(classes), "two error classes share a code"
    assert set(errors.WIRE_ERRORS) <= codes


def test_sync_and_async_clients_are_twins() -> None:
    def public(obj: object) -> set[str]:
        return {n for n in dir(obj) if not n.startswith("_")}

    # constructing a client opens no connection (sockets are made on first use)
    sync, asy = Client("tcp://127.0.0.1:1"), AsyncClient("tcp://127.0.0.1:1")
    assert public(sync) - public(asy) == {"close"}
    assert public(asy) - public(sync) == {"aclose"}
    for name in public(Client) & public(AsyncClient):
        a, b = getattr(Client, name), getattr(AsyncClient, name)
        if callable(a) and callable(b):
            pa = list(inspect.signature(a).parameters)
            pb = list(inspect.signature(b).parameters)
            assert pa == pb, name
