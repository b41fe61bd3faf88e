"""Path reservations in the state machine (zmesh/core/reservations.py), on both stores, with a
hand-driven clock: conflicts by pattern overlap, shared and exclusive, all or none, renewal,
release, expiry with the lease and with their own TTL, and recovery after a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from zmesh import protocol
from zmesh.core import DEFERRED
from zmesh.errors import BadRequest, Conflict, LeaseExpired, NotFound

from .test_core import T0, Harness


@pytest.fixture(params=["memory", "lmdb"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    core = Harness(request.param, tmp_path / "data")
    try:
        yield core
    finally:
        core.close()


def _topics(events: list[Any], prefix: str = "reservation.") -> list[tuple[str, str, str]]:
    return [(e.topic, e.body["agent"], e.body["pattern"]) for e in events if e.topic.startswith(prefix)]


def _held(h: Harness) -> dict[str, list[str]]:
    with h.store.read() as txn:
        return h.core.inspect(txn).held


def test_exclusive_conflicts_with_any_overlap_and_shared_coexist(h: Harness) -> None:
    h.do("reserve", agent="a", paths=["src/**/*.py"])
    h.do("reserve", agent="b", paths=["docs/**", "src/**/*.md"])  # disjoint from a's
    err = h.refused(Conflict, "reserve", agent="c", paths=["src/zmesh/broker.py"])
    assert err.details["holder"] == "a" and err.details["held_pattern"] == "src/**/*.py"
    assert "held exclusive by 'a'" in err.message and "it lapses in 10 s" in err.message
    h.refused(Conflict, "reserve", agent="c", paths=["src/x.py"], mode="shared")  # shared vs exclusive
    h.do("reserve", agent="c", paths=["lib/**"], mode="shared")
    h.do("reserve", agent="d", paths=["lib/core.py"], mode="shared")  # shared + shared coexist
    h.refused(Conflict, "reserve", agent="e", paths=["lib/core.py"])  # exclusive vs shared holders
    h.refused(Conflict, "reserve", agent="a", paths=["src/zmesh/**"])  # src/zmesh/x.md is b's
    h.do("reserve", agent="a", paths=["src/zmesh/*.py"])  # overlaps only its own reservation
    assert _held(h) == {"a": ["path:src/**/*.py\x00a", "path:src/zmesh/*.py\x00a"],
                        "b": ["path:docs/**\x00b", "path:src/**/*.md\x00b"],
                        "c": ["path:lib/**\x00c"], "d": ["path:lib/core.py\x00d"]}


def test_reserve_is_all_or_none(h: Harness) -> None:
    h.do("reserve", agent="a", paths=["src/core.py"])
    before = len(h.events)
    err = h.refused(Conflict, "reserve", agent="b", paths=["docs/**", "src/*.py", "tests/**"])
    assert err.details["pattern"] == "src/*.py"
    assert len(h.events) == before and "b" not in _held(h)  # not even docs/** was granted
    h.do("reserve", agent="b", paths=["docs/**", "tests/**"])


def test_renew_keeps_the_token_and_a_mode_change_is_a_new_grant(h: Harness) -> None:
    first = h.do("reserve", agent="a", paths=["src/**"], ttl=5)["reservations"][0]
    assert (first["renewed"], first["expires_in"]) == (False, 5.0)
    h.at(T0 + 3)
    again = h.do("reserve", agent="a", paths=["src/**"], ttl=5)["reservations"][0]
    assert again["token"] == first["token"] and again["renewed"] and again["expires_in"] == 5.0
    assert h.expire(T0 + 6) == [] and _held(h) == {"a": ["path:src/**\x00a"]}  # renewed at T0+3
    shared = h.do("reserve", agent="a", paths=["src/**"], mode="shared")["reservations"][0]
    assert shared["token"] > first["token"] and not shared["renewed"]
    assert _topics(h.events)[-2:] == [("reservation.released", "a", "src/**"), ("reservation.granted", "a", "src/**")]
    h.do("reserve", agent="b", paths=["src/x"], mode="shared")  # a holds it shared now


def test_release_named_or_all_and_not_found(h: Harness) -> None:
    h.do("reserve", agent="a", paths=["a/**", "b/**", "c/**"])
    err = h.refused(NotFound, "release_paths", agent="a", paths=["a/**", "z/**"])
    assert err.details == {"agent": "a", "pattern": "z/**"}
    assert h.do("release_paths", agent="a", paths=["b/"])["released"] == ["b/**"]  # canonical form
    assert h.do("release_paths", agent="a")["released"] == ["a/**", "c/**"]
    assert _held(h) == {}
    assert [t for t in _topics(h.events) if t[0] == "reservation.released"] == [
        ("reservation.released", "a", "b/**"), ("reservation.released", "a", "a/**"),
        ("reservation.released", "a", "c/**")]
    h.do("reserve", agent="b", paths=["**"])  # everything free again


def test_a_lapsed_lease_or_ttl_ends_reservations(h: Harness) -> None:
    h.do("register", agent="a", ttl=5)
    h.do("reserve", agent="a", paths=["src/**"])
    h.do("register", agent="b", ttl=30)
    h.do("reserve", agent="b", paths=["docs/**"], ttl=2)
    events = h.expire(T0 + 2.0, presence=True)
    assert [(e.topic, e.body["reason"]) for e in events if e.topic.startswith("reservation.")] == [
        ("reservation.expired", "claim_expired")]
    events = h.expire(T0 + 5.5, presence=True)
    gone = next(e for e in events if e.topic == "agent.expired")
    assert gone.body["released"] == ["path:src/**"]
    assert [(e.topic, e.body["pattern"], e.body["reason"]) for e in events if e.topic.startswith("reservation.")] == [
        ("reservation.expired", "src/**", "lease_expired")]
    assert _held(h) == {}
    h.do("reserve", agent="c", paths=["src/main.py", "docs/x"])


def test_unregister_ends_them_too(h: Harness) -> None:
    h.do("reserve", agent="a", paths=["x/**"])
    assert h.do("unregister", agent="a")["released"] == ["path:x/**"]
    assert _topics(h.events)[-1] == ("reservation.expired", "a", "x/**")


def test_list_filters_by_agent_and_overlap(h: Harness) -> None:
    h.do("reserve", agent="a", paths=["src/**/*.py"], ttl=60)
    h.do("reserve", agent="b", paths=["docs/**"], mode="shared")
    every = h.do("reservations")["reservations"]
    assert [(r["pattern"], r["agent"], r["mode"]) for r in every] == [
        ("docs/**", "b", "shared"), ("src/**/*.py", "a", "exclusive")]
    # the earlier of its own TTL and its agent's lease, which the reserve renewed for at least that TTL
    assert every[1]["expires_in"] == 60.0 and every[1]["ttl"] == 60.0 and every[0]["ttl"] is None
    assert every[0]["expires_in"] == 10.0  # b's lease: the h's default TTL
    assert [r["agent"] for r in h.do("reservations", agent="b")["reservations"]] == ["b"]
    assert [r["agent"] for r in h.do("reservations", path="src/zmesh/x.py")["reservations"]] == ["a"]
    assert h.do("reservations", path="src/README.md")["reservations"] == []


@pytest.mark.parametrize("clean", [False, True], ids=["crash", "clean"])
def test_reservations_survive_a_restart(h: Harness, clean: bool) -> None:
    token = h.do("reserve", agent="a", paths=["src/**"], ttl=30)["reservations"][0]["token"]
    h.restart(T0 + 100, clean=clean)
    assert _held(h) == {"a": ["path:src/**\x00a"]}
    err = h.refused(Conflict, "reserve", agent="b", paths=["src/x.py"])
    # the lease's full TTL again: 30 s, the TTL its first request (this reserve) gave the implicit agent
    assert err.details["token"] == token and err.details["expires_in"] == 30.0


@pytest.mark.parametrize("bad, why", [
    ([], "at least one"), (["/abs"], "relative"), (["a/../b"], "'..'"), (["a[0]"], "character classes"),
    (["a\nb"], "control characters"), ("src/**", "list of path patterns"), ([""], "must not be empty"),
])
def test_bad_patterns_are_refused_naming_the_field(h: Harness, bad: Any, why: str) -> None:
    with pytest.raises(BadRequest, match=why) as info:
        h.do("reserve", agent="a", paths=bad)
    assert info.value.details["field"] == "paths"


def test_the_wire_carries_canonical_patterns() -> None:
    body = protocol.validate(protocol.OPS["reserve"], {"agent": "a", "paths": ["./src//x/", "src/x/**"]}, wire=True)
    assert body["paths"] == ["src/x/**"]  # one pattern after normalizing: duplicates dropped


def test_the_longest_pattern_and_agent_fit_an_lmdb_key(h: Harness) -> None:
    """A 1,000-character pattern used to reach LMDB as a key above its 511 bytes (the
    broker answered 'internal'); patterns are now capped so the longest ones fit."""
    pattern, agent = "é" * 128, "a" * 200  # 256 bytes of UTF-8, 200 bytes
    h.do("reserve", agent=agent, paths=[pattern])
    assert h.do("reservations", agent=agent)["reservations"][0]["pattern"] == pattern
    with pytest.raises(BadRequest, match="at most 256 bytes") as info:
        h.do("reserve", agent="b", paths=["é" * 129])
    assert info.value.details["field"] == "paths"


# ---------------------------------------------------------------- the wait queue
def _wait(h: Harness, ticket: str, agent: str, paths: list[str], wait_s: float, mode: str = "exclusive") -> Any:
    """A reserve that may wait, as the broker sends it: with a request id and a ticket."""
    with h.store.write() as txn:
        b = h.core.batch(txn, h.now())
        b.request_id, b.ticket = ticket.encode(), ticket
        reply, events = h.core.handle(b, "reserve", protocol.validate(
            protocol.OPS["reserve"], {"agent": agent, "paths": paths, "wait_s": wait_s, "mode": mode}))
    h.events += events
    return reply


def _answers(h: Harness, mono: float | None = None, op: tuple[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One batch (an op, if given, then expiry) as the broker runs it; the answers it gave."""
    if mono is not None:
        h.mono = mono
    with h.store.write() as txn:
        b = h.core.batch(txn, h.now())
        if op is not None:
            h.core.handle(b, op[0], protocol.validate(protocol.OPS[op[0]], op[1]))
        h.events += h.core.expire(b)
    return dict(b.answers)


def test_a_waiting_reserve_is_granted_when_the_holder_lets_go(h: Harness) -> None:
    h.do("reserve", agent="a", paths=["src/**"])
    assert _wait(h, "t1", "b", ["src/x.py"], 30) is DEFERRED
    assert _wait(h, "t1", "b", ["src/x.py"], 30) is DEFERRED  # a retry keeps its place
    assert len(h.core.reservations.waiting) == 1
    got = _answers(h, op=("release_paths", {"agent": "a"}))
    assert [r["pattern"] for r in got["t1"]["reservations"]] == ["src/x.py"]
    assert _held(h) == {"b": ["path:src/x.py\x00b"]} and not h.core.reservations.waiting


def test_the_queue_is_first_come_first_served(h: Harness) -> None:
    h.do("reserve", agent="a", paths=["src/**"])
    h.do("reserve", agent="z", paths=["lib/**"])
    assert _wait(h, "first", "b", ["src/**", "lib/x"], 30) is DEFERRED  # needs both a's and z's
    assert _wait(h, "second", "c", ["src/x.py"], 30) is DEFERRED
    # a's release frees src/** but b still waits for lib/x: c must not overtake b on src/
    assert _answers(h, op=("release_paths", {"agent": "a"})) == {}
    err = h.refused(Conflict, "reserve", agent="d", paths=["src/y.py"])  # behind the queue, not around it
    assert err.details["waiting"] == "b"
    got = _answers(h, op=("release_paths", {"agent": "z"}))
    assert list(got) == ["first"]  # b is granted; c now waits behind b's src/**
    h.do("release_paths", agent="b")
    assert list(_answers(h)) == ["second"]


def test_a_wait_runs_out_with_the_conflict_as_it_stands(h: Harness) -> None:
    h.do("reserve", agent="a", paths=["src/**"])
    assert _wait(h, "t", "b", ["src/x.py"], 2) is DEFERRED
    assert _answers(h, T0 + 1.9) == {}
    got = _answers(h, T0 + 2.0)["t"]
    assert isinstance(got, Conflict) and got.details["holder"] == "a"
    assert not h.core.reservations.waiting and "b" not in _held(h)


def test_a_waiter_whose_lease_ends_leaves_the_queue(h: Harness) -> None:
    h.do("reserve", agent="a", paths=["src/**"])
    h.do("register", agent="b", ttl=5)
    assert _wait(h, "t", "b", ["src/x.py"], 60) is DEFERRED
    assert _wait(h, "u", "c", ["src/y.py"], 60) is DEFERRED  # independent of b's (no overlap)
    got = _answers(h, T0 + 5.5)
    assert isinstance(got["t"], LeaseExpired) and not any(w.agent == "b" for w in h.core.reservations.waiting.values())


def test_a_reservation_ttl_holds_the_lease_of_an_agent_that_sends_nothing_else(h: Harness) -> None:
    """``zmesh reserve --ttl 600`` from a shell: the agent's only request. Its lease lasted the
    default 10 s, and the reservation went with it (a claim's TTL already held the lease)."""
    got = h.do("reserve", agent="sh", paths=["lib/**"], ttl=600)["reservations"][0]
    assert got["expires_in"] == 600.0
    h.expire(T0 + 11, presence=True)
    assert _held(h) == {"sh": ["path:lib/**\x00sh"]}
    events = h.expire(T0 + 601, presence=True)
    assert ("reservation.expired", "sh", "lib/**") in _topics(events) and _held(h) == {}
