"""The one claim machinery: every resource anyone can hold (tasks today; message deliveries
and path reservations later) is granted, renewed, ended and expired here.

Rules it keeps:

* A claim is a record ``{agent, token, lease, ttl, since, ...}`` stored where its kind says
  (:meth:`ClaimKind.slot`), under a resource key ``<kind>:<name>``. Granting it is a
  check-and-set inside the single write transaction: the kind's :meth:`ClaimKind.conflict`
  hook decides against what is already held, so of any number of racers exactly one wins.
* Every grant takes a fresh fencing token from the one store-wide counter ``token``, so
  tokens only ever increase, across kinds and restarts.
* Every claim hangs on its agent's lease (agents.Agents ends them all when it lapses) and
  may have a TTL of its own (Due.CLAIM). Only an ending calls the kind's
  :meth:`ClaimKind.ended` hook; how the holder finished with it (a task's completion) is
  the kind's own business, through :meth:`Claims.end`.
* The agent -> claims index is volatile: rebuilt from the stored records (:meth:`load`), so
  a grant writes one tree less. A clean shutdown stores the list of claimed resources
  (:meth:`checkpoint`), so the next start reads those instead of scanning every kind.
* Nothing here knows a kind by name: the registry maps the kind in a resource key to its
  hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ..errors import Conflict, RemoteError
from .context import Batch, Now
from .deadlines import Deadlines, Due
from .eventlog import bump
from .schema import CLAIM_INDEX, dumps, loads, parse_resource

if TYPE_CHECKING:
    from ..store.base import Txn


class ClaimKind:
    """One kind of resource: where its claims are stored, how a conflict is decided, what
    happens when a claim ends, how its ids are shown. The defaults describe a resource with
    one holder whose claim is stored in the ``claims`` table under its resource key."""

    #: the kind in a resource key (``task`` in ``task:build-1``)
    prefix: bytes = b""
    #: holding a claim of this kind makes the agent busy (presence)
    busy: bool = False

    def slot(self, key: bytes) -> tuple[str, bytes]:
        """(table, key) where the claim on resource ``key`` is stored."""
        return "claims", key

    def records(self, txn: Txn) -> Iterator[tuple[bytes, bytes]]:
        """Every (resource key, claim record) of this kind in the store."""
        for key, raw in txn.scan("claims", prefix=self.prefix + b":"):
            yield bytes(key), raw

    def conflict(self, b: Batch, key: bytes, agent: str, request: dict[str, Any]) -> RemoteError | None:
        """Why ``agent`` may not have ``key`` now (None: it may). ``request`` holds what the
        grant was asked with: the fields the claim would carry (a mode, a pattern) and what
        the op already read (``check``). Default: one holder."""
        raw = b.txn.get(*self.slot(key))
        if raw is None:
            return None
        holder = loads(raw)["agent"]
        return Conflict(f"'{self.show(key)}' is held by '{holder}'",
                        {"resource": self.show(key), "holder": holder})

    def ended(self, b: Batch, key: bytes, claim: dict[str, Any], reason: str) -> None:
        """The claim ended without its holder finishing (``reason``: released, failed,
        lease_expired, claim_expired, unregistered): free the resource. Default: nothing
        more than the record's removal."""

    def show(self, key: bytes) -> str:
        """The resource as events and replies name it."""
        return key.decode()


class Claims:
    """Grants and ends claims of every registered kind."""

    def __init__(self, deadlines: Deadlines) -> None:
        self.kinds: dict[bytes, ClaimKind] = {}
        self.deadlines = deadlines
        #: agent -> resource keys it holds: what a lapsed lease releases (volatile)
        self.held: dict[str, set[bytes]] = {}
        #: agent -> how many of its claims make it busy, and the latest of them (presence
        #: asks on every claim: O(1), however many claims an agent holds)
        self.busy_count: dict[str, int] = {}
        self.latest_busy: dict[str, bytes] = {}

    def register(self, kind: ClaimKind) -> None:
        if not kind.prefix or b":" in kind.prefix:
            raise ValueError(f"claim kind prefix {kind.prefix!r} must be non-empty without ':'")
        if kind.prefix in self.kinds:
            raise ValueError(f"claim kind {kind.prefix.decode()!r} is registered already")
        self.kinds[kind.prefix] = kind

    def kind(self, key: bytes) -> ClaimKind:
        return self.kinds[parse_resource(key)[0]]

    # ------------------------------------------------------------ records
    def raw(self, txn: Txn, key: bytes) -> bytes | None:
        return txn.get(*self.kind(key).slot(key))

    def get(self, txn: Txn, key: bytes) -> dict[str, Any] | None:
        raw = self.raw(txn, key)
        return None if raw is None else loads(raw)

    def records(self, txn: Txn) -> Iterator[tuple[bytes, bytes]]:
        """Every (resource key, claim record) of every registered kind."""
        for kind in self.kinds.values():
            yield from kind.records(txn)

    # ------------------------------------------------------------ grant and end
    def grant(self, b: Batch, key: bytes, agent: dict[str, Any], ttl: float | None,
              extra: dict[str, Any] | None = None, check: dict[str, Any] | None = None) -> dict[str, Any]:
        """Give ``agent`` (its record) a claim on ``key`` or raise the kind's refusal.
        ``extra``: fields stored in the claim; ``check``: what the op read that the
        conflict hook decides on (not stored)."""
        kind = self.kinds[key[:key.index(b":")]]
        refusal = kind.conflict(b, key, agent["id"], {**extra, **check} if extra and check else extra or check or {})
        if refusal is not None:
            raise refusal
        claim = {"agent": agent["id"], "token": bump(b, b"token"), "lease": agent["lease"],
                 "ttl": ttl, "since": b.now.wall}
        if extra:
            claim.update(extra)
        b.txn.put(*kind.slot(key), dumps(claim))
        self._index(agent["id"], key, kind)
        if ttl:
            self.deadlines.set(Due.CLAIM, key, ttl, b.now.mono)
        return claim

    def renew(self, key: bytes, ttl: float, now: Now) -> None:
        self.deadlines.set(Due.CLAIM, key, ttl, now.mono)

    def end(self, b: Batch, key: bytes, agent: str) -> None:
        """Remove a claim record with its index entry and deadline (its holder finished
        with it, or :meth:`drop` is ending it)."""
        kind = self.kind(key)
        b.txn.delete(*kind.slot(key))
        keys = self.held.get(agent)
        if keys is not None and key in keys:
            keys.discard(key)
            if not keys:
                del self.held[agent]
            if kind.busy:
                left = self.busy_count[agent] - 1
                if left:
                    self.busy_count[agent] = left
                else:
                    del self.busy_count[agent]
                if self.latest_busy.get(agent) == key:
                    del self.latest_busy[agent]
        self.deadlines.drop(Due.CLAIM, key)

    def drop(self, b: Batch, key: bytes, claim: dict[str, Any], reason: str) -> None:
        """End a claim its holder did not finish: the resource is free again."""
        self.end(b, key, claim["agent"])
        self.kind(key).ended(b, key, claim, reason)

    def release_all(self, b: Batch, agent: str, reason: str) -> list[str]:
        """Drop every claim ``agent`` holds (its lease is over); returns them as shown."""
        released = []
        for key in sorted(self.held.get(agent, ())):
            claim = self.get(b.txn, key)
            if claim is not None:
                self.drop(b, key, claim, reason)
                released.append(self.kind(key).show(key))
        return released

    def expire(self, b: Batch, key: bytes) -> None:
        """The claim's own TTL ran out."""
        self.deadlines.drop(Due.CLAIM, key)
        claim = self.get(b.txn, key)
        if claim is not None:
            self.drop(b, key, claim, "claim_expired")

    def expires_in(self, key: bytes, agent: str, now: Now) -> float | None:
        """Seconds until the claim lapses: its own TTL or its agent's lease, the earlier."""
        claim, lease = self.deadlines.claim.get(key), self.deadlines.lease.get(agent)
        deadline = lease if claim is None else claim if lease is None else min(claim, lease)
        return None if deadline is None else round(max(0.0, deadline - now.mono), 3)

    # ------------------------------------------------------------ the volatile index
    def count(self) -> int:
        return sum(len(keys) for keys in self.held.values())

    def _index(self, agent: str, key: bytes, kind: ClaimKind) -> None:
        self.held.setdefault(agent, set()).add(key)
        if kind.busy:
            self.busy_count[agent] = self.busy_count.get(agent, 0) + 1
            self.latest_busy[agent] = key

    def is_busy(self, agent: str) -> bool:
        """Does ``agent`` hold a claim of a kind that makes it busy (a task)?"""
        return agent in self.busy_count

    def current_busy(self, agent: str) -> bytes | None:
        """The agent's latest busy-making claim still held (after that one ended: the
        highest key of the rest), or None."""
        if agent not in self.busy_count:
            return None
        latest = self.latest_busy.get(agent)
        return latest if latest is not None else max(self.busy_keys(agent))

    def busy_keys(self, agent: str) -> list[bytes]:
        """The claims ``agent`` holds of kinds that make it busy, sorted."""
        kinds = self.kinds
        return sorted(k for k in self.held.get(agent, ()) if kinds[parse_resource(k)[0]].busy)

    def shown(self, agent: str) -> list[str]:
        """Every claim ``agent`` holds, as shown."""
        return [self.kind(k).show(k) for k in sorted(self.held.get(agent, ()))]

    def held_of(self, prefix: bytes) -> list[bytes]:
        """The names of every claimed resource of one kind, sorted."""
        start = len(prefix) + 1
        return sorted(k[start:] for keys in self.held.values() for k in keys
                      if k[:start] == prefix + b":")

    def load(self, records: Iterable[tuple[bytes, bytes]], now: Now) -> None:
        """Rebuild the index from stored records; a claim TTL still running is kept, a
        missing one starts afresh at ``now``, one whose claim is gone is dropped."""
        self.held, self.busy_count, self.latest_busy = {}, {}, {}
        tokens: dict[str, int] = {}
        latest: dict[str, bytes] = {}
        live = set()
        deadlines = self.deadlines
        for key, raw in records:
            claim = loads(raw)
            agent, kind = claim["agent"], self.kind(key)
            self._index(agent, key, kind)
            if kind.busy:  # the latest is the one with the highest token
                if claim["token"] >= tokens.get(agent, 0):
                    tokens[agent] = claim["token"]
                    latest[agent] = key
            live.add(key)
            if claim.get("ttl") and key not in deadlines.claim:
                deadlines.set(Due.CLAIM, key, claim["ttl"], now.mono)
        for key in [k for k in deadlines.claim if k not in live]:
            deadlines.drop(Due.CLAIM, key)
        self.latest_busy = latest

    def checkpoint(self, txn: Txn) -> None:
        """On a clean shutdown: record which resources are claimed."""
        txn.put("meta", CLAIM_INDEX, b"\0".join(sorted(k for keys in self.held.values() for k in keys)))

    def indexed(self, txn: Txn) -> list[tuple[bytes, bytes]] | None:
        """The claims a clean shutdown's index names (None: no usable index, scan). The
        index goes now, in this transaction, so it never describes a later state."""
        index = txn.get("meta", CLAIM_INDEX)
        if index is None:  # not closed cleanly, or never
            return None
        txn.delete("meta", CLAIM_INDEX)
        records = []
        for key in index.split(b"\0"):
            if not key:
                continue
            if parse_resource(key)[0] not in self.kinds:
                return None  # a kind this broker does not know: scan what it does know
            raw = self.raw(txn, key)
            if raw is None:  # cannot happen unless edited by hand
                return None
            records.append((bytes(key), raw))
        return records
