"""The claim-kind registry, exercised by a second kind that exists only here.

Path reservations (a later issue) need what tasks do not: several holders of one resource
(shared vs exclusive) and conflicts decided by pattern overlap rather than "does this key
exist". ``ZoneKind`` is such a kind. It is granted, expired, released with its agent's
lease, rebuilt after a restart and shown in events by the same machinery as task claims
(zmesh/core/claims.py), which must not know either kind by name.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Iterator

import pytest

import zmesh.core
from zmesh import protocol
from zmesh.core import Batch, ClaimKind, Core, Now, Settings
from zmesh.core.schema import loads
from zmesh.errors import Conflict, RemoteError
from zmesh.store import LmdbStore, MemoryStore

T0 = 500.0


def overlap(a: str, b: str) -> bool:
    """Patterns are paths, or directories ending in ``/**`` (everything below)."""
    def root(p: str) -> tuple[str, bool]:
        return (p[:-3], True) if p.endswith("/**") else (p, False)
    (ra, da), (rb, db) = root(a), root(b)
    if ra == rb:
        return True
    return (da and rb.startswith(ra + "/")) or (db and ra.startswith(rb + "/"))


class ZoneKind(ClaimKind):
    """Shared or exclusive holds on path patterns; one claim record per (pattern, holder)."""

    prefix = b"zone"

    def __init__(self) -> None:
        self.endings: list[tuple[str, str, str]] = []  # (shown id, agent, reason)

    @staticmethod
    def key(pattern: str, agent: str) -> bytes:
        return b"zone:" + pattern.encode() + b"\0" + agent.encode()

    def conflict(self, b: Batch, key: bytes, agent: str, request: dict[str, Any]) -> RemoteError | None:
        for _other_key, raw in self.records(b.txn):
            other = loads(raw)
            if other["agent"] == agent or not overlap(other["pattern"], request["pattern"]):
                continue
            if "exclusive" in (other["mode"], request["mode"]):
                return Conflict(f"'{request['pattern']}' overlaps '{other['pattern']}' held "
                                f"{other['mode']} by '{other['agent']}'",
                                {"pattern": request["pattern"], "holder": other["agent"]})
        return None

    def ended(self, b: Batch, key: bytes, claim: dict[str, Any], reason: str) -> None:
        self.endings.append((self.show(key), claim["agent"], reason))

    def show(self, key: bytes) -> str:
        return key.split(b"\0")[0].decode()


class Mesh:
    """A core with the zone kind on a store, a hand-driven clock."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind, self.path = kind, path
        self.store = MemoryStore() if kind == "memory" else LmdbStore(path, durability="none", map_size=1 << 24)
        self.zones = ZoneKind()
        self.core = Core(Settings(default_ttl=10.0), kinds=[self.zones])
        self.mono = T0
        self.events: list[Any] = []

    def now(self) -> Now:
        return Now(self.mono, 1e9 + self.mono)

    def op(self, op: str, **body: Any) -> Any:
        with self.store.write() as txn:
            b = self.core.batch(txn, self.now())
            reply, events = self.core.handle(b, op, protocol.validate(protocol.OPS[op], body))
        self.events += events
        return reply

    def hold(self, agent: str, pattern: str, mode: str, ttl: float | None = None) -> dict[str, Any]:
        """Claim a zone as an op would: in one transaction, rolled back when refused."""
        try:
            with self.store.write() as txn:
                b = self.core.batch(txn, self.now())
                record = self.core.agents.ensure(b, agent, None)
                claim = self.core.claims.grant(b, ZoneKind.key(pattern, agent), record, ttl,
                                               {"pattern": pattern, "mode": mode})
        except RemoteError:
            with self.store.read() as txn:  # as the broker does after a rollback
                self.core.resync(txn, self.now())
            raise
        self.events += b.events
        return claim

    def expire(self, mono: float) -> list[Any]:
        self.mono = mono
        with self.store.write() as txn:
            events = self.core.expire(self.core.batch(txn, self.now()))
        self.events += events
        return events

    def held(self) -> dict[str, list[str]]:
        with self.store.read() as txn:
            return self.core.inspect(txn).held

    def restart(self, clean: bool) -> None:
        if clean:
            with self.store.write() as txn:
                self.core.checkpoint(txn)
        if self.kind == "lmdb":
            self.store.close()
            self.store = LmdbStore(self.path, durability="none", map_size=1 << 24)
        self.zones = ZoneKind()
        self.core = Core(Settings(default_ttl=10.0), kinds=[self.zones])
        with self.store.write() as txn:
            self.core.recover(txn, self.now())


@pytest.fixture(params=["memory", "lmdb"])
def mesh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(request.param, tmp_path / "data")
    yield m
    m.store.close()


def test_shared_holders_coexist_and_exclusive_conflicts_by_overlap(mesh: Mesh) -> None:
    mesh.hold("a", "src/**", "shared")
    mesh.hold("b", "src/core.py", "shared")  # overlaps, but both shared
    mesh.hold("c", "docs/**", "exclusive")  # no overlap with src
    with pytest.raises(Conflict, match="held shared by 'a'"):
        mesh.hold("c", "src/zmesh/x.py", "exclusive")
    with pytest.raises(Conflict, match="held exclusive by 'c'"):
        mesh.hold("d", "docs/index.md", "shared")
    mesh.hold("c", "docsite/**", "exclusive")  # a sibling name, not below docs/
    assert mesh.held() == {"a": ["zone:src/**\x00a"], "b": ["zone:src/core.py\x00b"],
                           "c": ["zone:docs/**\x00c", "zone:docsite/**\x00c"]}


def test_of_racing_exclusive_claims_in_one_batch_exactly_one_wins(mesh: Mesh) -> None:
    won, lost = [], []
    with mesh.store.write() as txn:
        b = mesh.core.batch(txn, mesh.now())
        for agent in ("a", "b", "c", "d"):
            record = mesh.core.agents.ensure(b, agent, None)
            try:
                mesh.core.claims.grant(b, ZoneKind.key("lib/**", agent), record, None,
                                       {"pattern": "lib/**", "mode": "exclusive"})
                won.append(agent)
            except Conflict:
                lost.append(agent)
    assert won == ["a"] and lost == ["b", "c", "d"]


def test_tokens_are_one_counter_across_kinds(mesh: Mesh) -> None:
    mesh.op("task_create", id="t1")
    tokens = [mesh.hold("a", "x/**", "shared")["token"],
              mesh.op("claim", task="t1", agent="b")["token"],
              mesh.hold("c", "y", "exclusive")["token"]]
    assert tokens == sorted(tokens) and len(set(tokens)) == 3


def test_a_lapsed_lease_releases_claims_of_every_kind(mesh: Mesh) -> None:
    mesh.op("task_create", id="t1")
    mesh.op("register", agent="a", ttl=5)
    mesh.op("claim", task="t1", agent="a")
    mesh.hold("a", "src/**", "exclusive")
    mesh.hold("b", "docs/**", "exclusive")
    events = mesh.expire(T0 + 5.5)
    expired = [e.body for e in events if e.topic == "agent.expired"]
    assert expired == [{"agent": "a", "released": ["t1", "zone:src/**"], "liveness": "gone", "ts": 1e9 + T0 + 5.5}]
    assert mesh.zones.endings == [("zone:src/**", "a", "lease_expired")]
    assert mesh.op("task_get", task="t1")["status"] == "available"
    assert mesh.held() == {"b": ["zone:docs/**\x00b"]}
    mesh.hold("c", "src/main.py", "exclusive")  # free again


def test_a_zone_claim_ttl_lapses_on_its_own(mesh: Mesh) -> None:
    mesh.op("register", agent="a", ttl=30)
    mesh.hold("a", "src/**", "exclusive", ttl=2)
    with mesh.store.read() as txn:
        assert mesh.core.inspect(txn).claim_deadlines == {"zone:src/**\x00a": T0 + 2}
    assert mesh.expire(T0 + 1.9) == []
    mesh.expire(T0 + 2.0)
    assert mesh.zones.endings == [("zone:src/**", "a", "claim_expired")]
    assert mesh.held() == {}
    assert mesh.op("status")["agents"] == 1  # only the claim lapsed, not the lease


@pytest.mark.parametrize("clean", [False, True], ids=["crash", "clean"])
def test_zone_claims_survive_a_restart_with_a_fresh_ttl(mesh: Mesh, clean: bool) -> None:
    mesh.op("task_create", id="t1")
    mesh.op("register", agent="a", ttl=10)
    mesh.op("claim", task="t1", agent="a")
    mesh.hold("a", "src/**", "exclusive", ttl=4)
    mesh.hold("b", "lib", "shared")
    mesh.mono = T0 + 1000  # long downtime: nothing lapses because of it
    mesh.restart(clean)
    assert mesh.held() == {"a": ["task:t1", "zone:src/**\x00a"], "b": ["zone:lib\x00b"]}
    with pytest.raises(Conflict):  # the restarted broker still refuses the overlap
        mesh.hold("c", "src/x", "shared")
    assert mesh.expire(T0 + 1003.9) == []
    mesh.expire(T0 + 1004)  # the zone claim's own TTL, restarted at recovery
    assert mesh.zones.endings == [("zone:src/**", "a", "claim_expired")]


def test_the_registry_refuses_a_second_kind_with_the_same_prefix() -> None:
    core = Core(kinds=[ZoneKind()])
    with pytest.raises(ValueError, match="registered already"):
        core.claims.register(ZoneKind())
    with pytest.raises(ValueError, match="registered already"):
        core.claims.register(type("Tasks2", (ClaimKind,), {"prefix": b"task"})())
    with pytest.raises(ValueError, match="without ':'"):
        core.claims.register(type("Bad", (ClaimKind,), {"prefix": b"a:b"})())


def test_the_generic_machinery_names_no_kind() -> None:
    """Nothing in the grant / end / expire / resync path branches on a kind: the modules
    that hold it contain no kind prefix and no kind class."""
    root = Path(zmesh.core.__file__).parent
    for module in ("claims.py", "deadlines.py", "agents.py", "__init__.py", "eventlog.py"):
        tree = ast.parse((root / module).read_text())
        constants = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
                     and isinstance(n.value, bytes)}
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert not {c for c in constants if c.startswith(b"task")}, module
        assert not names & {"TASK", "TaskKind"}, module
