"""Unit tests of the state machine (zmesh/core/), driven as the broker drives it:
one validated request per write transaction, ``now`` passed in, no sockets.

Every test runs on the memory store and on LMDB (durability "none"). Refusals are
checked as the broker sees them: the error is caught *inside* the write transaction (the
broker serves a whole batch in one transaction), so a handler that wrote before refusing
would leave its write behind; the test then compares the whole store, the task and agent
views and the volatile deadlines before and after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from zmesh import protocol
from zmesh.core import Core, CoreState, Now, Recovery, Settings
from zmesh.errors import (
    ClaimExpired,
    Conflict,
    LeaseExpired,
    NotFound,
    NotOwner,
    RemoteError,
    SnapshotRequired,
    StaleToken,
)
from zmesh.protocol import Event
from zmesh.core.schema import JOURNAL_SEQ, TABLE_NAMES
from zmesh.store import LmdbStore, MemoryStore

T0 = 1000.0  # monotonic start; any value works, deadlines are relative
#: topics of agent presence and liveness (tests of tasks and leases leave them out)
PRESENCE_TOPICS = frozenset({"agent.idle", "agent.busy", "agent.blocked", "agent.completed",
                             "agent.help", "agent.evasive", "agent.alive"})


def without_presence(events: list[Event]) -> list[Event]:
    return [e for e in events if e.topic not in PRESENCE_TOPICS]
WALL0 = 1_700_000_000.0


class Harness:
    """A core on a store with a hand-driven clock; collects every event it produced."""

    def __init__(self, kind: str, path: Path, settings: Settings | None = None) -> None:
        self.kind = kind
        self.path = path
        self.settings = settings or Settings(default_ttl=10.0, event_log_size=1000)
        self.store = self._open()
        self.core = Core(self.settings)
        self.mono = T0
        self.events: list[Event] = []

    def _open(self) -> Any:
        if self.kind == "memory":
            return MemoryStore()
        return LmdbStore(self.path, durability="none", map_size=1 << 26)

    # ---------------------------------------------------------------- clock
    def now(self) -> Now:
        return Now(self.mono, WALL0 + self.mono)

    def at(self, mono: float) -> "Harness":
        self.mono = mono
        return self

    # ---------------------------------------------------------------- requests
    def call(self, op: str, presence: bool = False, **body: Any) -> tuple[Any, list[Event]]:
        """One request in its own transaction. Returns the reply and its task and lease
        events (with ``presence``: every event, agent presence and liveness included)."""
        with self.store.write() as txn:
            reply, events = self.core.handle(self.core.batch(txn, self.now()), op,
                                             protocol.validate(protocol.OPS[op], body))
        self.events += events
        return reply, events if presence else without_presence(events)

    def do(self, op: str, **body: Any) -> Any:
        return self.call(op, **body)[0]

    def refused(self, exc: type[RemoteError], op: str, **body: Any) -> RemoteError:
        """The request is refused with ``exc`` and changes nothing at all."""
        before = self.state()
        validated = protocol.validate(protocol.OPS[op], body)
        with self.store.write() as txn:
            with pytest.raises(exc) as info:
                self.core.handle(self.core.batch(txn, self.now()), op, validated)
            assert not txn.dirty, f"refused {op} wrote to its transaction"
        assert type(info.value) is exc
        assert self.state() == before, f"refused {op} changed the state"
        return info.value

    def expire(self, mono: float | None = None, presence: bool = False) -> list[Event]:
        """Expiry at ``mono``; its task and lease events (``presence``: every event)."""
        if mono is not None:
            self.mono = mono
        with self.store.write() as txn:
            events = self.core.expire(self.core.batch(txn, self.now()))
        self.events += events
        return events if presence else without_presence(events)

    def restart(self, mono: float, clean: bool = False) -> Recovery:
        """A new broker process on the same data: new Core, (reopened store), recover.
        ``clean``: the old core wrote its claim index, as a broker does on shutdown."""
        if clean:
            with self.store.write() as txn:
                self.core.checkpoint(txn)
        if self.kind == "lmdb":
            self.store.close()
            self.store = self._open()
        self.core = Core(self.settings)
        self.mono = mono
        with self.store.write() as txn:
            return self.core.recover(txn, self.now())

    # ---------------------------------------------------------------- inspection
    def raw(self) -> dict[str, list[tuple[bytes, bytes]]]:
        """The core's state as stored (the store's own bookkeeping, the journal seq, left out)."""
        with self.store.read() as txn:
            return {t: [(bytes(k), bytes(v)) for k, v in txn.scan(t) if (t, k) != ("meta", JOURNAL_SEQ)]
                    for t in TABLE_NAMES}

    def state(self) -> tuple[Any, ...]:
        return (self.raw(), self.do("task_list", limit=10_000)["tasks"],
                self.do("agent_list")["agents"], self.inspect())

    def inspect(self) -> CoreState:
        with self.store.read() as txn:
            return self.core.inspect(txn)

    def task(self, task_id: str) -> dict[str, Any]:
        return self.do("task_get", task=task_id)

    def agents(self) -> dict[str, dict[str, Any]]:
        return {a["id"]: a for a in self.do("agent_list")["agents"]}

    def topics(self, events: list[Event]) -> list[str]:
        return [e.topic for e in events]

    def close(self) -> None:
        self.store.close()


@pytest.fixture(params=["memory", "lmdb"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(request.param, tmp_path / "data")
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture(params=["memory", "lmdb"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def released(events: list[Event]) -> list[tuple[str, str, str]]:
    return [(e.body["task_id"], e.body["agent"], e.body["reason"]) for e in events
            if e.topic == "task.released"]


# ==================================================================== create
def test_create_available_without_dependencies(h: Harness) -> None:
    reply, events = h.call("task_create", id="a", type="build", data={"x": 1}, priority=4,
                           requires=["py"], max_attempts=2)
    assert reply["status"] == "available"
    assert (reply["id"], reply["type"], reply["data"], reply["priority"]) == ("a", "build", {"x": 1}, 4)
    assert reply["requires"] == ["py"] and reply["max_attempts"] == 2
    assert reply["attempts"] == 0 and reply["owner"] is None and reply["token"] is None
    assert "order" not in reply
    assert [(e.topic, e.body["task_id"], e.body["old_status"], e.body["new_status"]) for e in events] \
        == [("task.created", "a", None, "available")]
    assert h.task("a") == reply


def test_create_waiting_until_dependency_completed(h: Harness) -> None:
    h.do("task_create", id="a")
    b = h.do("task_create", id="b", depends_on=["a"])
    assert b["status"] == "waiting"
    assert b["depends_on"] == ["a"]
    tok = h.do("claim", task="a", agent="w")["token"]
    assert h.task("b")["status"] == "waiting"  # claimed is not completed
    h.do("complete", task="a", agent="w", token=tok)
    # a dependency that is already completed does not make a new task wait
    assert h.do("task_create", id="c", depends_on=["a"])["status"] == "available"


def test_create_unknown_dependency_is_not_found(h: Harness) -> None:
    h.do("task_create", id="a")
    err = h.refused(NotFound, "task_create", id="b", depends_on=["a", "ghost"])
    assert err.details == {"task": "ghost"}
    h.refused(NotFound, "task_get", task="b")


def test_create_duplicate_is_conflict(h: Harness) -> None:
    h.do("task_create", id="a", priority=1)
    err = h.refused(Conflict, "task_create", id="a", priority=9)
    assert err.details == {"task": "a", "reason": "exists"}
    assert h.task("a")["priority"] == 1


# ==================================================================== claim
def test_claim_exactly_one_winner(h: Harness) -> None:
    h.do("task_create", id="t")
    reply, events = h.call("claim", task="t", agent="a1")
    assert reply["task"] == "t" and reply["agent"] == "a1"
    assert isinstance(reply["token"], int) and reply["token"] > 0
    assert reply["lease"] == h.agents()["a1"]["lease"]
    assert reply["expires_in"] == 10.0  # the implicit lease, default TTL
    assert "task.claimed" in h.topics(events)
    for racer in ("a2", "a3", "a4"):
        err = h.refused(Conflict, "claim", task="t", agent=racer)
        assert err.details == {"task": "t", "status": "claimed", "holder": "a1"}
    view = h.task("t")
    assert (view["status"], view["owner"], view["token"], view["claims"]) == ("claimed", "a1", reply["token"], 1)
    assert h.do("status")["claims"] == 1
    assert set(h.agents()) == {"a1"}  # losers got no implicit lease


def test_reclaim_by_holder_returns_same_claim(h: Harness) -> None:
    h.do("task_create", id="t")
    first = h.do("claim", task="t", agent="a1")
    h.at(T0 + 3)
    again, events = h.call("claim", task="t", agent="a1")
    assert events == []
    assert again["token"] == first["token"] and again["lease"] == first["lease"]
    assert h.task("t")["claims"] == 1
    assert h.do("status")["token"] == first["token"]  # no new token was drawn


def test_claim_unknown_task_is_not_found(h: Harness) -> None:
    err = h.refused(NotFound, "claim", task="nope", agent="a1")
    assert err.details == {"task": "nope"}
    assert h.agents() == {}


@pytest.mark.parametrize("state", ["waiting", "completed", "dead"])
def test_claim_of_unclaimable_task_is_conflict(h: Harness, state: str) -> None:
    h.do("task_create", id="dep")
    h.do("task_create", id="t", depends_on=["dep"] if state == "waiting" else [], max_attempts=1)
    if state == "completed":
        tok = h.do("claim", task="t", agent="a1")["token"]
        h.do("complete", task="t", agent="a1", token=tok)
    elif state == "dead":
        tok = h.do("claim", task="t", agent="a1")["token"]
        h.do("fail", task="t", agent="a1", token=tok, error="boom")
    assert h.task("t")["status"] == state
    for agent in ("a1", "a2"):
        err = h.refused(Conflict, "claim", task="t", agent=agent)
        assert err.details == {"task": "t", "status": state}


def test_tokens_strictly_increase_across_claims_leases_and_restarts(h: Harness) -> None:
    numbers: list[int] = []
    for i in range(4):
        h.do("task_create", id=f"t{i}")
    numbers.append(h.do("register", agent="r1")["lease"])
    numbers.append(h.do("claim", task="t0", agent="r1")["token"])
    numbers.append(h.do("claim", task="t1", agent="i1")["lease"])  # implicit lease first
    numbers.append(h.task("t1")["token"])
    h.do("release", task="t0", agent="r1")
    numbers.append(h.do("claim", task="t0", agent="r1")["token"])  # re-claim: new token
    h.do("fail", task="t0", agent="r1", error="x")
    numbers.append(h.do("claim_next", agent="r1")["token"])
    h.restart(T0 + 50)
    numbers.append(h.do("register", agent="r2")["lease"])
    numbers.append(h.do("claim", task="t3", agent="r2")["token"])
    h.expire(T0 + 500)  # every lease lapses
    h.restart(T0 + 5000)
    numbers.append(h.do("claim", task="t3", agent="r3")["token"])
    numbers.append(h.do("register", agent="r1")["lease"])
    assert numbers == sorted(set(numbers)), numbers
    assert h.do("status")["token"] == numbers[-1]


def test_reregister_keeps_lease_id_and_claims(h: Harness) -> None:
    h.do("task_create", id="t")
    lease = h.do("register", agent="a", capabilities=["x"], ttl=5)["lease"]
    tok = h.do("claim", task="t", agent="a")["token"]
    again = h.do("register", agent="a", capabilities=["y"], ttl=20, metadata={"m": 1})
    assert again == {"agent": "a", "lease": lease, "ttl": 20}
    rec = h.agents()["a"]
    assert (rec["capabilities"], rec["metadata"], rec["ttl"], rec["implicit"]) == (["y"], {"m": 1}, 20, False)
    assert h.task("t")["token"] == tok


# ==================================================================== complete / fail / release
def test_complete_by_owner_with_current_token(h: Harness) -> None:
    h.do("task_create", id="t")
    tok = h.do("claim", task="t", agent="a1")["token"]
    view, events = h.call("complete", task="t", agent="a1", token=tok, result={"ok": [1, 2]})
    assert view["status"] == "completed"
    assert (view["result"], view["completed_by"], view["completed_token"]) == ({"ok": [1, 2]}, "a1", tok)
    assert view["owner"] is None and view["token"] is None
    assert [(e.topic, e.body["claimed_by"], e.body["token"]) for e in events] == [("task.completed", "a1", tok)]
    assert h.task("t") == view
    assert h.agents()["a1"]["completed"] == 1
    assert h.do("status")["claims"] == 0
    # a retry of the complete that succeeded is answered again, without a second event
    again, events = h.call("complete", task="t", agent="a1", token=tok, result={"ok": [1, 2]})
    assert events == [] and again == view
    # anyone else, or another token, is refused and the result stays
    h.refused(NotOwner, "complete", task="t", agent="a2", result="clobber")
    h.refused(StaleToken, "complete", task="t", agent="a1", token=tok + 1, result="clobber")
    h.refused(NotOwner, "fail", task="t", agent="a1", error="late")
    h.refused(NotOwner, "release", task="t", agent="a1")
    assert h.task("t") == view


def test_complete_without_token_by_owner(h: Harness) -> None:
    h.do("task_create", id="t")
    h.do("claim", task="t", agent="a1")
    assert h.do("complete", task="t", agent="a1", result=7)["result"] == 7


def test_non_owner_is_refused(h: Harness) -> None:
    h.do("task_create", id="t")
    h.do("task_create", id="free")
    tok = h.do("claim", task="t", agent="a1")["token"]
    for op, extra in (("complete", {}), ("fail", {"error": "e"}), ("release", {}), ("renew", {})):
        err = h.refused(NotOwner, op, task="t", agent="a2", **extra)
        assert err.details == {"task": "t", "agent": "a2", "owner": "a1"}
        # the right token in the wrong hands is still not ownership
        h.refused(NotOwner, op, task="t", agent="a2", token=tok, **extra)
        err = h.refused(NotOwner, op, task="free", agent="a1", **extra)
        assert err.details["owner"] is None
        h.refused(NotFound, op, task="ghost", agent="a1", **extra)
    assert h.task("t")["owner"] == "a1"


def test_stale_token_after_release_and_reclaim(h: Harness) -> None:
    h.do("task_create", id="t")
    old = h.do("claim", task="t", agent="a1")["token"]
    h.do("release", task="t", agent="a1", token=old)
    # no claim at all: a token names nothing current
    err = h.refused(StaleToken, "complete", task="t", agent="a1", token=old)
    assert err.details | {"at": None} == {"task": "t", "token": old, "current": None, "holder": None,
                                          "agent": "a1", "reason": "released", "at": None}
    new = h.do("claim", task="t", agent="a2")["token"]
    assert new > old
    for op, extra in (("complete", {"result": 1}), ("fail", {"error": "e"}), ("release", {}), ("renew", {})):
        err = h.refused(StaleToken, op, task="t", agent="a1", token=old, **extra)
        assert (err.details["token"], err.details["current"], err.details["holder"]) == (old, new, "a2")
        # the owner with a wrong token is refused too
        h.refused(StaleToken, op, task="t", agent="a2", token=new + 100, **extra)
    assert h.do("complete", task="t", agent="a2", token=new)["completed_by"] == "a2"


def test_stale_token_after_lease_expiry(h: Harness) -> None:
    h.do("task_create", id="t")
    old = h.do("claim", task="t", agent="slow")["token"]
    h.expire(T0 + 10)
    new = h.do("claim", task="t", agent="fast")["token"]
    # a lapse says so (issue 13): lease_expired, not stale_token / not_owner
    h.refused(LeaseExpired, "complete", task="t", agent="slow", token=old, result="late")
    h.refused(LeaseExpired, "complete", task="t", agent="slow", result="late")
    assert h.task("t")["owner"] == "fast"
    assert h.task("t")["token"] == new


def test_fail_makes_task_available_again(h: Harness) -> None:
    h.do("task_create", id="t", max_attempts=3)
    tok = h.do("claim", task="t", agent="a1")["token"]
    view, events = h.call("fail", task="t", agent="a1", token=tok, error="disk full")
    assert view["status"] == "available" and view["attempts"] == 1
    assert view["owner"] is None
    assert view["history"][-1]["event"] == "failed"
    assert view["history"][-1]["error"] == "disk full"
    assert view["history"][-1]["token"] == tok and view["history"][-1]["agent"] == "a1"
    [ev] = events
    assert (ev.topic, ev.body["old_status"], ev.body["new_status"], ev.body["attempts"]) == \
        ("task.failed", "claimed", "available", 1)
    assert h.agents()["a1"]["failed"] == 1
    h.refused(StaleToken, "complete", task="t", agent="a1", token=tok)
    assert h.do("claim", task="t", agent="a2")["token"] > tok


def test_fail_max_attempts_makes_task_dead(h: Harness) -> None:
    h.do("task_create", id="t", max_attempts=2)
    for attempt in (1, 2):
        tok = h.do("claim", task="t", agent=f"a{attempt}")["token"]
        view, events = h.call("fail", task="t", agent=f"a{attempt}", token=tok, error=f"e{attempt}")
        assert view["attempts"] == attempt
    assert view["status"] == "dead"
    assert [(e.topic, e.body["new_status"]) for e in events] == [("task.dead", "dead")]
    assert [e["error"] for e in view["history"]] == ["e1", "e2"]
    assert h.do("claim_next", agent="a3") is None
    h.refused(Conflict, "claim", task="t", agent="a3")
    assert h.do("status")["tasks"]["dead"] == 1


def test_release_makes_task_available_without_attempt(h: Harness) -> None:
    h.do("task_create", id="t")
    tok = h.do("claim", task="t", agent="a1")["token"]
    view, events = h.call("release", task="t", agent="a1", token=tok)
    assert (view["status"], view["attempts"], view["owner"]) == ("available", 0, None)
    assert [(e["event"], e["agent"], e["token"]) for e in view["history"]] == [("released", "a1", tok)]
    assert released(events) == [("t", "a1", "released")]
    assert set(h.agents()) == {"a1"}  # releasing keeps the lease
    assert h.do("claim", task="t", agent="a2")["agent"] == "a2"


# ==================================================================== claim_next
def test_claim_next_priority_then_age(h: Harness) -> None:
    for tid, prio in (("low", -5), ("mid1", 3), ("hi1", 7), ("mid2", 3), ("zero", 0), ("hi2", 7)):
        h.do("task_create", id=tid, priority=prio)
    got = []
    while (reply := h.do("claim_next", agent="w")) is not None:
        assert reply["agent"] == "w"
        assert reply["task_record"]["id"] == reply["task"]
        assert reply["task_record"]["status"] == "claimed"
        assert reply["task_record"]["token"] == reply["token"]
        got.append(reply["task"])
    assert got == ["hi1", "hi2", "mid1", "mid2", "zero", "low"]
    # a released task keeps its place by age, not at the back
    h.do("release", task="mid1", agent="w")
    h.do("release", task="mid2", agent="w")
    h.do("task_create", id="mid0", priority=3)
    assert [h.do("claim_next", agent="v")["task"] for _ in range(3)] == ["mid1", "mid2", "mid0"]


def test_task_next_names_what_claim_next_would_take_and_claims_nothing(h: Harness) -> None:
    """The claim order is the broker's alone: task_next reads it, claim_next takes from it."""
    for tid, prio, req in (("low", -5, []), ("gpu", 9, ["gpu"]), ("mid1", 3, []), ("hi", 7, []), ("mid2", 3, []),
                           ("both", 8, ["gpu", "linux"])):
        h.do("task_create", id=tid, priority=prio, requires=req)
    h.do("register", agent="g", capabilities=["gpu"])
    assert h.do("task_next", agent="g")["id"] == "gpu"  # the registered capabilities count
    assert h.do("task_next")["id"] == "hi"  # no agent: no capabilities
    assert h.do("task_next", capabilities=["gpu", "linux"])["id"] == "gpu"
    assert h.do("task_next", agent="g", capabilities=[])["id"] == "hi"  # given ones replace the registered
    assert h.do("task_next", agent="nobody")["id"] == "hi"  # an unknown agent has none, and is not made
    assert "nobody" not in [a["id"] for a in h.do("agent_list")["agents"]]
    for caps in ([], ["gpu"], ["gpu", "linux"]):
        order = []
        while (named := h.do("task_next", capabilities=caps)) is not None:
            assert named["status"] == "available"
            taken = h.do("claim_next", agent="w", capabilities=caps)
            assert taken["task"] == named["id"], caps  # the same task, in the same order
            order.append(named["id"])
        assert h.do("claim_next", agent="w", capabilities=caps) is None
        for tid in order:
            h.do("release", task=tid, agent="w")
    assert h.do("task_get", task="hi")["status"] == "available"  # naming claimed nothing


def test_claim_next_capability_filter(h: Harness) -> None:
    h.do("task_create", id="gpu", requires=["gpu"], priority=9)
    h.do("task_create", id="both", requires=["gpu", "linux"], priority=8)
    h.do("task_create", id="any", priority=1)
    h.do("register", agent="plain")
    h.do("register", agent="g", capabilities=["gpu"])
    h.do("register", agent="gl", capabilities=["linux", "gpu", "extra"])
    assert h.do("claim_next", agent="plain")["task"] == "any"
    assert h.do("claim_next", agent="plain") is None
    assert h.do("claim_next", agent="g")["task"] == "gpu"
    assert h.do("claim_next", agent="g") is None  # "both" needs linux as well
    assert h.do("claim_next", agent="gl")["task"] == "both"
    # capabilities passed in the request replace the registered ones
    h.do("release", task="both", agent="gl")
    assert h.do("claim_next", agent="gl", capabilities=[]) is None
    assert h.do("claim_next", agent="plain", capabilities=["linux", "gpu"])["task"] == "both"


def test_ready_index_is_cleaned_lazily_and_never_serves_a_claimed_task(h: Harness) -> None:
    def ready_ids() -> list[str]:
        return [k[12:].decode() for k, _ in h.raw()["ready"]]

    for t in ("a", "b", "c", "d"):
        h.do("task_create", id=t)
    h.do("claim", task="a", agent="w")
    h.do("claim", task="b", agent="w")
    assert ready_ids() == ["a", "b", "c", "d"]  # a claim leaves its entry
    listed = h.do("task_list", status="available", limit=1)
    assert [t["id"] for t in listed["tasks"]] == ["c"] and listed["more"] is True
    assert h.do("claim_next", agent="x")["task"] == "c"  # skips a, b and drops them
    assert ready_ids() == ["d"]
    h.do("release", task="a", agent="w")  # back to available: its entry returns
    assert ready_ids() == ["a", "d"]
    h.do("claim", task="d", agent="w")
    h.do("complete", task="d", agent="w")  # completed: its entry goes
    h.do("complete", task="b", agent="w")  # (already dropped: nothing to remove)
    assert ready_ids() == ["a"]
    assert [t["id"] for t in h.do("task_list", status="available")["tasks"]] == ["a"]
    assert h.do("status")["tasks"]["available"] == 1


def test_claim_next_none_when_nothing_matches(h: Harness) -> None:
    assert h.do("claim_next", agent="w") is None
    h.do("task_create", id="dep")
    h.do("task_create", id="waits", depends_on=["dep"], priority=5)
    h.do("claim", task="dep", agent="other")
    assert h.do("claim_next", agent="w") is None  # one claimed, one waiting
    assert h.do("status")["claims"] == 1


# ==================================================================== dependencies
def test_completing_dependency_wakes_waiters(h: Harness) -> None:
    h.do("task_create", id="a")
    h.do("task_create", id="b", depends_on=["a"])
    h.do("task_create", id="c", depends_on=["a"])
    assert h.do("claim_next", agent="w")["task"] == "a"
    _, events = h.call("complete", task="a", agent="w")
    assert [(e.topic, e.body["task_id"]) for e in events] == \
        [("task.completed", "a"), ("task.available", "b"), ("task.available", "c")]
    for e in events[1:]:
        assert (e.body["old_status"], e.body["new_status"], e.body["completed_dependency"]) == \
            ("waiting", "available", "a")
    assert h.task("b")["status"] == h.task("c")["status"] == "available"
    assert h.do("claim_next", agent="w")["task"] == "b"


def test_two_dependencies_need_both(h: Harness) -> None:
    h.do("task_create", id="a")
    h.do("task_create", id="b")
    h.do("task_create", id="c", depends_on=["a", "b"])
    h.do("claim", task="a", agent="w")
    h.do("claim", task="b", agent="w")
    _, events = h.call("complete", task="b", agent="w")
    assert h.topics(events) == ["task.completed"]
    assert h.task("c")["status"] == "waiting"
    h.refused(Conflict, "claim", task="c", agent="w")
    _, events = h.call("complete", task="a", agent="w")
    assert h.topics(events) == ["task.completed", "task.available"]
    assert h.task("c")["status"] == "available"


def test_failed_or_released_dependency_keeps_waiter_waiting(h: Harness) -> None:
    h.do("task_create", id="a", max_attempts=1)
    h.do("task_create", id="b", depends_on=["a"])
    h.do("claim", task="a", agent="w")
    h.do("release", task="a", agent="w")
    h.do("claim", task="a", agent="w")
    h.do("fail", task="a", agent="w", error="x")
    assert h.task("a")["status"] == "dead"
    assert h.task("b")["status"] == "waiting"


# ==================================================================== leases and expiry
def test_claim_gives_implicit_lease(h: Harness) -> None:
    h.do("task_create", id="t")
    h.do("task_create", id="u")
    reply, events = h.call("claim", task="t", agent="imp", ttl=4)
    reg = [e for e in events if e.topic == "agent.registered"]
    assert len(reg) == 1 and reg[0].body["implicit"] is True and reg[0].body["ttl"] == 4
    rec = h.agents()["imp"]
    assert (rec["implicit"], rec["ttl"], rec["lease"], rec["expires_in"]) == (True, 4, reply["lease"], 4.0)
    h.do("claim", task="u", agent="dflt")
    assert h.agents()["dflt"]["ttl"] == 10.0  # the default TTL


def test_lease_expiry_releases_claims(h: Harness) -> None:
    for tid in ("t1", "t2", "other"):
        h.do("task_create", id=tid)
    tok1 = h.do("claim", task="t1", agent="a")["token"]
    h.do("claim", task="t2", agent="a")
    h.at(T0 + 5).do("claim", task="other", agent="b")
    assert h.core.next_deadline() == T0 + 10 * protocol.EVASIVE_AFTER  # a turns evasive first
    assert h.inspect().leases == {"a": T0 + 10, "b": T0 + 15}
    assert h.expire(T0 + 9.999) == []
    assert h.task("t1")["owner"] == "a"
    events = h.expire(T0 + 10)
    assert sorted(released(events)) == [("t1", "a", "lease_expired"), ("t2", "a", "lease_expired")]
    [gone] = [e for e in events if e.topic == "agent.expired"]
    assert gone.body["agent"] == "a" and sorted(gone.body["released"]) == ["t1", "t2"]
    assert set(h.agents()) == {"b"}
    view = h.task("t1")
    assert view["status"] == "available" and view["owner"] is None
    assert view["history"][-1]["event"] == "lease_expired" and view["history"][-1]["token"] == tok1
    assert h.task("other")["owner"] == "b"
    h.refused(LeaseExpired, "heartbeat", agent="a")
    assert released(h.expire(T0 + 15)) == [("other", "b", "lease_expired")]
    assert h.do("status")["claims"] == 0 and h.do("status")["agents"] == 0


def test_heartbeat_keeps_lease_alive(h: Harness) -> None:
    h.do("task_create", id="t")
    lease = h.do("register", agent="a", ttl=10)["lease"]
    h.do("claim", task="t", agent="a")
    for k in range(1, 6):  # heartbeat every 8 s for 40 s
        h.at(T0 + 8 * k)
        assert h.expire() == []
        assert h.do("heartbeat", agent="a", lease=lease) == {"agent": "a", "lease": lease, "ttl": 10}
    assert h.agents()["a"]["expires_in"] == 10.0
    assert h.expire(T0 + 49.9) == []
    assert h.task("t")["owner"] == "a"
    events = h.expire(T0 + 50)
    assert released(events) == [("t", "a", "lease_expired")]


def test_any_request_from_the_agent_renews_its_lease(h: Harness) -> None:
    h.do("task_create", id="t")
    h.do("task_create", id="u")
    h.do("register", agent="a", ttl=10)
    h.at(T0 + 8).do("claim", task="t", agent="a")
    assert h.expire(T0 + 17) == []
    h.do("claim_next", agent="a")  # at T0 + 17
    assert h.expire(T0 + 26) == []
    assert len(released(h.expire(T0 + 27))) == 2


def test_heartbeat_wrong_lease_or_unknown_agent(h: Harness) -> None:
    lease = h.do("register", agent="a")["lease"]
    err = h.refused(LeaseExpired, "heartbeat", agent="a", lease=lease + 1)
    assert err.details == {"agent": "a"}
    h.refused(LeaseExpired, "heartbeat", agent="nobody")
    h.refused(LeaseExpired, "heartbeat", agent="nobody", lease=lease)
    # a replaced lease: unregister, register again -> new lease id; the old one is refused
    h.do("unregister", agent="a")
    new = h.do("register", agent="a")["lease"]
    assert new > lease
    h.refused(LeaseExpired, "heartbeat", agent="a", lease=lease)
    assert h.do("heartbeat", agent="a", lease=new)["lease"] == new
    assert h.do("heartbeat", agent="a")["lease"] == new


def test_claim_ttl_expires_alone(h: Harness) -> None:
    h.do("task_create", id="short")
    h.do("task_create", id="long")
    h.do("register", agent="a", ttl=60)
    reply = h.do("claim", task="short", agent="a", ttl=2)
    assert reply["expires_in"] == 2.0
    h.do("claim", task="long", agent="a")
    assert h.task("long")["expires_in"] == 60.0
    assert h.expire(T0 + 1.9) == []
    events = h.expire(T0 + 2)
    assert released(events) == [("short", "a", "claim_expired")]
    assert h.topics(events) == ["task.released"]  # no agent.expired
    assert h.task("short")["history"][-1]["event"] == "claim_expired"
    assert h.task("long")["owner"] == "a"
    assert set(h.agents()) == {"a"}
    assert h.expire(T0 + 59) == []


def test_renew_extends_claim_and_lease(h: Harness) -> None:
    h.do("task_create", id="t")
    h.do("register", agent="a", ttl=5)
    tok = h.do("claim", task="t", agent="a", ttl=2)["token"]
    before = h.do("status")
    h.at(T0 + 1.5)
    reply, events = h.call("renew", task="t", agent="a", token=tok)
    assert events == []
    assert reply == {"task": "t", "agent": "a", "token": tok, "lease": reply["lease"], "expires_in": 2.0}
    assert h.do("status") == before  # renew draws no token and writes nothing
    assert h.expire(T0 + 3) == []
    h.at(T0 + 3.0)
    assert h.do("renew", task="t", agent="a", token=tok, ttl=4)["expires_in"] == 4.0
    assert h.expire(T0 + 6.9) == []
    assert released(h.expire(T0 + 7)) == [("t", "a", "claim_expired")]


def test_renew_without_claim_ttl_renews_the_lease(h: Harness) -> None:
    h.do("task_create", id="t")
    h.do("register", agent="a", ttl=5)
    h.do("claim", task="t", agent="a")
    for k in range(1, 5):
        h.at(T0 + 4 * k)
        assert h.expire() == []
        assert h.do("renew", task="t", agent="a")["expires_in"] == 5.0
    assert released(h.expire(T0 + 21)) == [("t", "a", "lease_expired")]


def test_unregister_releases_at_once(h: Harness) -> None:
    for tid in ("t1", "t2", "t3"):
        h.do("task_create", id=tid)
    h.do("register", agent="a")
    h.do("claim", task="t1", agent="a")
    h.do("claim", task="t2", agent="a", ttl=3)
    h.do("claim", task="t3", agent="b")
    reply, events = h.call("unregister", agent="a")
    assert reply["agent"] == "a" and sorted(reply["released"]) == ["t1", "t2"]
    assert sorted(released(events)) == [("t1", "a", "unregistered"), ("t2", "a", "unregistered")]
    assert events[-1].topic == "agent.unregistered"
    assert set(h.agents()) == {"b"}
    assert h.task("t1")["status"] == h.task("t2")["status"] == "available"
    # the dropped claim deadline and lease never fire later
    assert h.expire(T0 + 9.9) == []
    err = h.refused(NotFound, "unregister", agent="a")
    assert err.details == {"agent": "a"}


@pytest.mark.parametrize("clean", [False, True], ids=["after-crash", "after-clean-shutdown"])
def test_recover_gives_every_lease_full_ttl(h: Harness, clean: bool) -> None:
    for tid in ("t1", "t2", "t3"):
        h.do("task_create", id=tid)
    h.do("register", agent="a", ttl=10)
    h.do("claim", task="t1", agent="a")
    h.do("claim", task="t2", agent="a", ttl=4)
    h.at(T0 + 8).do("claim", task="t3", agent="b", ttl=30)  # implicit lease of 30 s
    seq = h.do("status")["seq"]
    later = T0 + 100_000.0  # long downtime: every deadline is far in the past
    h.restart(later, clean=clean)
    assert h.do("status")["seq"] == seq  # a restart writes nothing
    assert h.do("status")["claims"] == 3 and [t["id"] for t in h.do("task_list", status="claimed")["tasks"]] == [
        "t1", "t2", "t3"]
    assert h.expire(later) == []
    assert h.agents()["a"]["expires_in"] == 10.0
    assert h.task("t2")["expires_in"] == 4.0
    assert h.expire(later + 3.9) == []
    assert released(h.expire(later + 4)) == [("t2", "a", "claim_expired")]
    assert h.expire(later + 9.9) == []
    events = h.expire(later + 10)
    assert released(events) == [("t1", "a", "lease_expired")]
    assert [e.body["agent"] for e in events if e.topic == "agent.expired"] == ["a"]
    assert h.expire(later + 29.9) == []
    assert released(h.expire(later + 30)) == [("t3", "b", "lease_expired")]
    seqs = [e.seq for e in h.events]
    assert seqs == list(range(1, len(seqs) + 1))


def test_heartbeat_after_restart_with_lease_id(h: Harness) -> None:
    lease = h.do("register", agent="a", ttl=10)["lease"]
    h.restart(T0 + 5000)
    assert h.do("heartbeat", agent="a", lease=lease)["lease"] == lease
    assert h.expire(T0 + 5009) == []
    assert [e.topic for e in h.expire(T0 + 5010)] == ["agent.expired"]


# ==================================================================== events
def _busy(h: Harness) -> None:
    h.do("register", agent="a", capabilities=["x"])
    h.do("task_create", id="t1")
    h.do("task_create", id="t2", depends_on=["t1"], requires=["x"])
    h.do("task_create", id="t3", max_attempts=1)
    tok = h.do("claim", task="t1", agent="a")["token"]
    h.do("complete", task="t1", agent="a", token=tok, result=1)
    h.do("claim_next", agent="a")
    h.do("release", task="t2", agent="a")
    h.do("claim", task="t3", agent="b")
    h.do("fail", task="t3", agent="b", error="e")
    h.do("claim", task="t2", agent="c", ttl=1)
    h.expire(T0 + 1)
    h.do("unregister", agent="a")
    h.expire(T0 + 100)


def test_event_seq_gap_free_and_replay_agrees(h: Harness) -> None:
    _busy(h)
    seqs = [e.seq for e in h.events]
    assert len(seqs) > 15
    assert seqs == list(range(1, len(seqs) + 1))
    assert all(e.body["ts"] >= WALL0 + T0 for e in h.events)
    rep = h.do("replay", since=0)
    assert rep["last_seq"] == len(seqs) and rep["more"] is False
    assert rep["events"] == [e.to_json() for e in h.events]
    assert h.do("status")["seq"] == len(seqs)
    mid = len(seqs) // 2
    later = h.do("replay", since=mid)["events"]
    assert [e["seq"] for e in later] == seqs[mid:]
    assert h.do("replay", since=len(seqs))["events"] == []
    page = h.do("replay", since=2, limit=3)
    assert [e["seq"] for e in page["events"]] == [3, 4, 5] and page["more"] is True
    tasks_only = h.do("replay", since=0, topics=["agent."])["events"]
    assert tasks_only and all(e["topic"].startswith("agent.") for e in tasks_only)
    assert [e["seq"] for e in tasks_only] == [e.seq for e in h.events if e.topic.startswith("agent.")]


def test_publish_is_one_logged_event_and_touches_no_other_state(h: Harness) -> None:
    h.do("task_create", id="t1")
    h.do("register", agent="a")
    before = h.raw()
    reply, events = h.call("publish", topic="deploy.done", data={"sha": "abc"}, agent="a")
    assert [(e.topic, e.seq) for e in events] == [("msg.deploy.done", reply["seq"])]
    assert reply == {"topic": "msg.deploy.done", "seq": 3}
    assert events[0].body == {"data": {"sha": "abc"}, "from": "a", "ts": WALL0 + T0}
    after = h.raw()
    assert {t: rows for t, rows in after.items() if t != "events"} == \
        {t: rows for t, rows in before.items() if t != "events"}
    # an unknown sender is only a label: no agent is registered for it
    h.do("publish", topic="x", agent="stranger")
    assert [a["id"] for a in h.do("agent_list")["agents"]] == ["a"]
    replayed = h.do("replay", since=2, topics=["msg."])["events"]
    assert [(e["topic"], e["body"]["data"], e["body"]["from"]) for e in replayed] == \
        [("msg.deploy.done", {"sha": "abc"}, "a"), ("msg.x", None, "stranger")]


def test_replay_of_trimmed_range_needs_snapshot(kind: str, tmp_path: Path) -> None:
    h = Harness(kind, tmp_path / "d", Settings(default_ttl=10.0, event_log_size=5))
    try:
        for i in range(12):
            h.do("task_create", id=f"t{i}")
        assert [e.seq for e in h.events] == list(range(1, 13))
        err = h.refused(SnapshotRequired, "replay", since=0)
        assert err.details == {"since": 0, "oldest": 8, "last_seq": 12}
        h.refused(SnapshotRequired, "replay", since=6)
        assert [e["seq"] for e in h.do("replay", since=7)["events"]] == [8, 9, 10, 11, 12]
        assert [e["seq"] for e in h.do("replay", since=10)["events"]] == [11, 12]
        assert h.do("replay", since=12)["events"] == []
        assert h.do("replay", since=7)["events"] == [e.to_json() for e in h.events[-5:]]
    finally:
        h.close()


def test_restart_with_smaller_event_log_trims_it(kind: str, tmp_path: Path) -> None:
    """Each event trims one key; a restart with a smaller log size trims the backlog."""
    h = Harness(kind, tmp_path / "d", Settings(default_ttl=10.0, event_log_size=100))
    try:
        for i in range(12):
            h.do("task_create", id=f"t{i}")
        assert [e["seq"] for e in h.do("replay", since=0)["events"]] == list(range(1, 13))
        h.settings.event_log_size = 5
        h.restart(T0 + 1)
        assert h.refused(SnapshotRequired, "replay", since=0).details["oldest"] == 8
        h.do("task_create", id="t12")
        assert [e["seq"] for e in h.do("replay", since=8)["events"]] == [9, 10, 11, 12, 13]
        assert len([k for k, _ in h.raw()["events"] if not k.startswith(b"\xff")]) == 5
    finally:
        h.close()


# ==================================================================== status and lists
def _census(h: Harness) -> dict[str, int]:
    counts = dict.fromkeys(protocol.STATUSES, 0)
    for t in h.do("task_list")["tasks"]:
        counts[t["status"]] += 1
    return counts


def test_status_counts_match_task_list(h: Harness) -> None:
    h.do("task_create", id="done")
    h.do("task_create", id="w", depends_on=["done"])
    h.do("task_create", id="w2", depends_on=["w"])
    h.do("task_create", id="d", max_attempts=1)
    h.do("task_create", id="c")
    h.do("task_create", id="f")
    h.do("complete", task="done", agent=h.do("claim", task="done", agent="a")["agent"])
    h.do("claim", task="d", agent="a")
    h.do("fail", task="d", agent="a", error="x")
    h.do("claim", task="c", agent="b")
    h.do("claim", task="f", agent="b")
    h.do("fail", task="f", agent="b", error="x")
    status = h.do("status")
    assert status["tasks"] == _census(h) == {"waiting": 1, "available": 2, "claimed": 1,
                                             "completed": 1, "dead": 1}
    assert status["claims"] == 1 and status["agents"] == 2
    for st, n in status["tasks"].items():
        listed = h.do("task_list", status=st)["tasks"]
        assert len(listed) == n and all(t["status"] == st for t in listed)
    h.expire(T0 + 10)
    assert h.do("status")["tasks"] == _census(h)
    assert h.do("status")["tasks"]["claimed"] == 0


def test_task_list_paging(h: Harness) -> None:
    ids = [f"t{i:02d}" for i in range(8)]
    for tid in reversed(ids):
        h.do("task_create", id=tid)
    for tid in ids[1::2]:
        h.do("claim", task=tid, agent="a")
    page = h.do("task_list", limit=3)
    assert [t["id"] for t in page["tasks"]] == ids[:3] and page["more"] is True
    assert page["seq"] == h.do("status")["seq"]
    got, after = [], ""
    while True:
        page = h.do("task_list", limit=3, after=after)
        got += [t["id"] for t in page["tasks"]]
        if not page["more"]:
            break
        after = got[-1]
    assert got == ids
    exact = h.do("task_list", limit=8)
    assert len(exact["tasks"]) == 8 and exact["more"] is False
    claimed = ids[1::2]
    page = h.do("task_list", status="claimed", limit=2)
    assert [t["id"] for t in page["tasks"]] == claimed[:2] and page["more"] is True
    page = h.do("task_list", status="claimed", limit=2, after=claimed[1])
    assert [t["id"] for t in page["tasks"]] == claimed[2:] and page["more"] is False
    # available tasks come in claim order (same priority: oldest first; created in reverse)
    assert [t["id"] for t in h.do("task_list", status="available")["tasks"]] == ["t06", "t04", "t02", "t00"]
    page = h.do("task_list", status="available", limit=2)
    assert [t["id"] for t in page["tasks"]] == ["t06", "t04"] and page["more"] is True
    page = h.do("task_list", status="available", limit=2, after="t04")
    assert [t["id"] for t in page["tasks"]] == ["t02", "t00"] and page["more"] is False
    # paging after a task that has been claimed since keeps its place in the order
    assert [t["id"] for t in h.do("task_list", status="available", after="t03")["tasks"]] == ["t02", "t00"]
    with pytest.raises(NotFound):
        h.do("task_list", status="available", after="t055")
    # in id order, `after` need not be an existing id
    assert [t["id"] for t in h.do("task_list", after="t055")["tasks"]] == ["t06", "t07"]
    assert h.do("task_list", status="completed")["tasks"] == []
    assert all(t["owner"] == "a" for t in h.do("task_list", status="claimed")["tasks"])


# ==================================================================== transactions
def test_refusal_raised_through_write_aborts(h: Harness) -> None:
    """The pattern of a single request per transaction: the exception aborts the txn."""
    h.do("task_create", id="t")
    h.do("claim", task="t", agent="a")
    before = h.state()
    with pytest.raises(Conflict):
        h.call("claim", task="t", agent="b")
    with pytest.raises(NotOwner):
        h.call("complete", task="t", agent="b")
    assert h.state() == before
    assert [e.topic for e in h.events].count("task.claimed") == 1


def test_store_write_aborts_on_exception(h: Harness) -> None:
    before = h.raw()
    with pytest.raises(RuntimeError):
        with h.store.write() as txn:
            txn.put("tasks", b"junk", b"{}")
            txn.delete("meta", b"schema")
            raise RuntimeError("boom")
    assert h.raw() == before


def test_heartbeats_do_not_grow_the_deadline_heap(tmp_path) -> None:
    """A heartbeat that only extends a lease pushes nothing: the heap holds one entry per
    lease, so memory and expiry work do not grow with the heartbeat rate."""
    core = Core(Settings(default_ttl=10.0))
    store = MemoryStore()
    t = 0.0

    def call(op: str, **body):
        with store.write() as txn:
            return core.handle(core.batch(txn, Now(t, 1000.0 + t)), op, protocol.validate(protocol.OPS[op], body))

    for i in range(10):
        call("register", agent=f"a{i}")
    for _step in range(200):
        t += 1.0
        for i in range(10):
            call("heartbeat", agent=f"a{i}")
        with store.write() as txn:
            assert core.expire(core.batch(txn, Now(t, 1000.0 + t))) == []
        queued = core.inspect(txn).queued
    assert queued <= 20, queued
    t += 10.0  # silence past the TTL: every lease lapses
    with store.write() as txn:
        events = core.expire(core.batch(txn, Now(t, 1000.0 + t)))
    assert sorted(e.body["agent"] for e in events if e.topic == "agent.expired") == [f"a{i}" for i in range(10)]


def test_counters_of_a_rolled_back_batch_are_not_reused(h: Harness) -> None:
    """The core keeps the counters it read in a transaction (a batch of claims reads the
    same four); a batch rolled back (the broker re-applies it after StoreFull or a
    poisoned request) must not leave its seq or token behind for the next transaction."""
    h.do("task_create", id="t1")
    h.do("task_create", id="t2")
    seq = h.do("status")["seq"]
    with pytest.raises(RuntimeError):
        with h.store.write() as txn:
            ctx = h.core.batch(txn, h.now())
            for task in ("t1", "t2"):
                h.core.handle(ctx, "claim", protocol.validate(protocol.OPS["claim"], {"task": task, "agent": "a"}))
            raise RuntimeError("rolled back")
    with h.store.read() as txn:
        h.core.resync(txn, h.now())  # as the broker does after a rollback
    first, events = h.call("claim", task="t1", agent="a")
    assert [e.seq for e in h.events[-3:]] == [seq + 1, seq + 2, seq + 3]  # agent.registered, task.claimed, agent.busy
    assert first["token"] == 2  # the lease took token 1 in this batch, as in the rolled-back one
    status = h.do("status")
    assert status["tasks"]["claimed"] == 1 and status["tasks"]["available"] == 1
    assert status["seq"] == seq + 3 and status["token"] == 2


def test_claim_index_of_a_clean_shutdown_is_used_once(h: Harness) -> None:
    """A clean shutdown's claim index spares the next start a scan of every task; it is
    consumed by that start, so claims made afterwards are found after a crash."""
    for tid in ("t1", "t2", "t3"):
        h.do("task_create", id=tid)
    h.do("claim", task="t1", agent="a")
    h.restart(T0 + 1, clean=True)
    with h.store.read() as txn:
        assert txn.get("meta", b"claim_index") is None
    h.do("claim", task="t2", agent="b")
    h.do("complete", task="t1", agent="a")
    h.restart(T0 + 2)  # a crash: no index, the tasks are scanned
    assert h.inspect().held == {"b": ["task:t2"]}
    assert [t["id"] for t in h.do("task_list", status="claimed")["tasks"]] == ["t2"]


def test_a_rolled_back_expiry_still_expires_later(h: Harness) -> None:
    """A batch that expired a lease and a claim TTL is rolled back (another request in it
    crashed the core): the store still has the agent and its claims, so after resync
    they must still expire; the deadlines the rolled-back batch consumed come back."""
    for tid in ("t1", "t2"):
        h.do("task_create", id=tid)
    h.do("register", agent="a", ttl=10)
    h.do("register", agent="b", ttl=30)
    h.do("claim", task="t1", agent="a")
    h.do("claim", task="t2", agent="b", ttl=5)
    with pytest.raises(RuntimeError):
        with h.store.write() as txn:
            assert h.core.expire(h.core.batch(txn, h.at(T0 + 11).now()))  # a's lease and b's claim lapse
            raise RuntimeError("another request in the batch crashed the core")
    with h.store.read() as txn:
        h.core.resync(txn, h.now())  # as the broker does after a rollback
    assert {a["id"] for a in h.do("agent_list")["agents"]} == {"a", "b"}
    assert h.do("status")["agents"] == 2 and h.do("status")["claims"] == 2
    events = h.expire(T0 + 11 + 10)  # restarted at the resync: a full TTL from then
    assert sorted(released(events)) == [("t1", "a", "lease_expired"), ("t2", "b", "claim_expired")]


def test_a_rolled_back_registration_leaves_no_phantom_lease(h: Harness) -> None:
    h.do("task_create", id="t1")
    with pytest.raises(RuntimeError):
        with h.store.write() as txn:
            h.core.handle(h.core.batch(txn, h.now()), "claim",
                          protocol.validate(protocol.OPS["claim"], {"task": "t1", "agent": "ghost"}))
            raise RuntimeError("rolled back")
    with h.store.read() as txn:
        h.core.resync(txn, h.now())
    assert h.do("status")["agents"] == 0 and h.do("status")["claims"] == 0
    assert h.expire(T0 + 1000) == []  # no agent.expired for an agent that never existed


# ==================================================================== why a claim is gone (issue 13)
# complete / fail / release / renew by an agent whose claim has ended say how it ended
# (from the task's history), when, and who holds the task now; a refusal writes nothing.
_HELD_OPS = (("complete", {"result": "late"}), ("fail", {"error": "late"}), ("release", {}),
             ("renew", {}))


def test_lapsed_lease_is_lease_expired_not_stale_token(h: Harness) -> None:
    h.do("task_create", id="build")
    old = h.do("claim", task="build", agent="alice")["token"]
    h.expire(T0 + 10)  # alice's lease (default TTL 10 s) lapses
    h.at(T0 + 22.5)
    for op, extra in _HELD_OPS:
        err = h.refused(LeaseExpired, op, task="build", agent="alice", token=old, **extra)
        assert err.details == {"task": "build", "token": old, "agent": "alice",
                               "reason": "lease_expired", "at": WALL0 + T0 + 10,
                               "holder": None, "current": None}
        assert err.message == (f"claim on 'build' (token {old}) lapsed 12.5 s ago: the lease of "
                               "agent 'alice' expired; the task went back to the pool")
    new = h.do("claim", task="build", agent="bob")["token"]
    for op, extra in _HELD_OPS:
        err = h.refused(LeaseExpired, op, task="build", agent="alice", token=old, **extra)
        assert (err.details["holder"], err.details["current"]) == ("bob", new)
        assert err.details["reason"] == "lease_expired" and err.details["at"] == WALL0 + T0 + 10
        assert err.message.endswith(f"; 'bob' holds it now (token {new})"), err.message
    assert h.task("build")["owner"] == "bob"


def test_lapsed_claim_ttl_is_claim_expired(h: Harness) -> None:
    h.do("task_create", id="t")
    h.do("register", agent="a", ttl=60)
    tok = h.do("claim", task="t", agent="a", ttl=2)["token"]
    h.expire(T0 + 2)
    h.at(T0 + 3)
    for op, extra in _HELD_OPS:
        err = h.refused(ClaimExpired, op, task="t", agent="a", token=tok, **extra)
        assert err.details == {"task": "t", "token": tok, "agent": "a", "reason": "claim_expired",
                               "at": WALL0 + T0 + 2, "holder": None, "current": None}
        assert "TTL ran out" in err.message and "1.0 s ago" in err.message
        # without a token: the agent's latest ending on the task explains it the same way
        err = h.refused(ClaimExpired, op, task="t", agent="a", **extra)
        assert err.details["token"] == tok and err.details["reason"] == "claim_expired"


def test_unregistered_claim_is_lease_expired(h: Harness) -> None:
    h.do("task_create", id="t")
    tok = h.do("claim", task="t", agent="a")["token"]
    h.at(T0 + 1).do("unregister", agent="a")
    cur = h.do("claim", task="t", agent="b")["token"]
    for op, extra in _HELD_OPS:
        err = h.refused(LeaseExpired, op, task="t", agent="a", token=tok, **extra)
        assert err.details == {"task": "t", "token": tok, "agent": "a", "reason": "unregistered",
                               "at": WALL0 + T0 + 1, "holder": "b", "current": cur}
        assert "unregistered" in err.message


def test_no_token_not_owner_after_a_lapse_is_lease_expired(h: Harness) -> None:
    h.do("task_create", id="t")
    tok = h.do("claim", task="t", agent="slow")["token"]
    h.expire(T0 + 10)
    cur = h.do("claim", task="t", agent="fast")["token"]
    for op, extra in _HELD_OPS:
        err = h.refused(LeaseExpired, op, task="t", agent="slow", **extra)
        assert err.details == {"task": "t", "token": tok, "agent": "slow", "reason": "lease_expired",
                               "at": WALL0 + T0 + 10, "holder": "fast", "current": cur}
    # an agent that never held the task is still simply not the owner
    err = h.refused(NotOwner, "complete", task="t", agent="other")
    assert err.details == {"task": "t", "agent": "other", "owner": "fast"}


def test_the_latest_ending_explains_a_no_token_refusal(h: Harness) -> None:
    h.do("task_create", id="t")
    h.do("claim", task="t", agent="a")
    h.expire(T0 + 10)  # a's first claim lapses
    h.at(T0 + 11)
    again = h.do("claim", task="t", agent="a")["token"]
    h.do("release", task="t", agent="a", token=again)  # its later claim it gave back
    err = h.refused(NotOwner, "complete", task="t", agent="a")
    assert "released" in err.message
    assert (err.details["token"], err.details["reason"]) == (again, "released")


def test_release_is_recorded_in_history(h: Harness) -> None:
    h.do("task_create", id="t")
    tok = h.do("claim", task="t", agent="a1")["token"]
    h.at(T0 + 1)
    view = h.do("release", task="t", agent="a1", token=tok)
    assert view["history"] == [{"ts": WALL0 + T0 + 1, "event": "released", "agent": "a1", "token": tok}]


def test_stale_token_after_own_release_says_released(h: Harness) -> None:
    h.do("task_create", id="build")
    old = h.do("claim", task="build", agent="alice")["token"]
    h.at(T0 + 2).do("release", task="build", agent="alice", token=old)
    h.at(T0 + 5)
    err = h.refused(StaleToken, "complete", task="build", agent="alice", token=old, result=1)
    assert err.message == (f"token {old} on 'build' ended when 'alice' released it 3.0 s ago; "
                           "'build' is not claimed (status available)")
    assert err.details == {"task": "build", "token": old, "agent": "alice", "reason": "released",
                           "at": WALL0 + T0 + 2, "holder": None, "current": None}
    new = h.do("claim", task="build", agent="bob")["token"]
    for op, extra in _HELD_OPS:
        err = h.refused(StaleToken, op, task="build", agent="alice", token=old, **extra)
        assert "released" in err.message and err.message.endswith(f"'bob' holds it now (token {new})")
        assert (err.details["holder"], err.details["current"]) == ("bob", new)


def test_stale_token_after_own_failure_says_failed(h: Harness) -> None:
    h.do("task_create", id="t", max_attempts=3)
    tok = h.do("claim", task="t", agent="a")["token"]
    h.do("fail", task="t", agent="a", token=tok, error="disk full")
    err = h.refused(StaleToken, "complete", task="t", agent="a", token=tok)
    assert err.details["reason"] == "failed" and "failed" in err.message


def test_stale_token_after_completion_says_completed(h: Harness) -> None:
    h.do("task_create", id="t")
    tok = h.do("claim", task="t", agent="a")["token"]
    h.do("complete", task="t", agent="a", token=tok, result=1)
    for op, extra in _HELD_OPS[1:]:  # the completer's own fail / release / renew
        err = h.refused(StaleToken, op, task="t", agent="a", token=tok, **extra)
        assert err.details["reason"] == "completed" and "completed" in err.message
    err = h.refused(StaleToken, "complete", task="t", agent="b", token=tok, result=2)
    assert "completed" in err.message and "'a'" in err.message
    assert (err.details["agent"], err.details["reason"]) == ("a", "completed")
    # the completer's retry is still answered with the task
    assert h.do("complete", task="t", agent="a", token=tok, result=1)["completed_by"] == "a"


def test_unknown_token_is_stale_with_the_holder(h: Harness) -> None:
    h.do("task_create", id="build")
    cur = h.do("claim", task="build", agent="bob")["token"]
    err = h.refused(StaleToken, "complete", task="build", agent="alice", token=cur + 100)
    assert err.message == (f"token {cur + 100} is not the current claim on 'build': "
                           f"'bob' holds it with token {cur}")
    assert err.details == {"task": "build", "token": cur + 100, "holder": "bob", "current": cur}
    h.do("task_create", id="free")
    err = h.refused(StaleToken, "release", task="free", agent="alice", token=cur)
    assert err.message == (f"token {cur} is not the current claim on 'free': "
                           "'free' is not claimed (status available)")
    assert err.details == {"task": "free", "token": cur, "holder": None, "current": None}


def test_refused_lapse_writes_nothing(h: Harness) -> None:
    h.do("task_create", id="t")
    tok = h.do("claim", task="t", agent="a")["token"]
    h.expire(T0 + 10)
    h.do("claim", task="t", agent="b")
    before = h.raw()
    for op, extra in _HELD_OPS:
        with h.store.write() as txn:
            with pytest.raises(LeaseExpired):
                h.core.handle(h.core.batch(txn, h.now()), op, protocol.validate(protocol.OPS[op], {
                    "task": "t", "agent": "a", "token": tok, **extra}))
            assert not txn.dirty
    assert h.raw() == before
    assert set(h.agents()) == {"b"}  # the refused agent got no implicit lease


# ==================================================================== recovery report (issue 13)
def _recover(h: Harness, mono: float, clean: bool = False) -> Recovery:
    return h.restart(mono, clean)


def test_recover_reports_a_fresh_store(h: Harness) -> None:
    assert _recover(h, T0) == Recovery(agents=0, claims=0, claim_index=False, trimmed_events=0,
                                       moved_claims=0)


@pytest.mark.parametrize("clean", [True, False])
def test_recover_reports_leases_claims_and_the_index(h: Harness, clean: bool) -> None:
    for tid in ("t1", "t2", "t3"):
        h.do("task_create", id=tid)
    h.do("register", agent="idle")
    h.do("claim", task="t1", agent="a")
    h.do("claim", task="t2", agent="a", ttl=4)
    h.do("claim", task="t3", agent="b")
    rec = _recover(h, T0 + 100, clean=clean)
    assert rec == Recovery(agents=3, claims=3, claim_index=clean, trimmed_events=0, moved_claims=0)
    # the index is consumed: the next start scans
    assert _recover(h, T0 + 101).claim_index is False


def test_recover_reports_trimmed_events_and_moved_claims(h: Harness) -> None:
    for i in range(8):
        h.do("task_create", id=f"t{i}")
    h.do("claim", task="t0", agent="a")  # events 9 (agent.registered), 10 (task.claimed), 11 (agent.busy)
    with h.store.write() as txn:  # as schema 3 stored it: in the claims table
        raw = txn.get("tasks", b"t0\0")
        txn.delete("tasks", b"t0\0")
        txn.put("claims", b"task:t0", bytes(raw))
    h.settings.event_log_size = 4
    rec = _recover(h, T0 + 1)
    assert rec == Recovery(agents=1, claims=1, claim_index=False, trimmed_events=7, moved_claims=1)
    assert h.task("t0")["owner"] == "a"
