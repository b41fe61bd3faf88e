"""Presence, liveness, the idle queue, helpers and blockers in the state machine
(zmesh/core/presence.py, agents.py, blockers.py), driven as the broker drives it (see
tests/test_core.py's Harness). The hypothesis machine in test_core_properties.py checks
the same rules at random; these pin the named cases of issue 14."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from zmesh import protocol
from zmesh.errors import BadRequest, Conflict, NotFound

from .test_core import T0, WALL0, Harness


@pytest.fixture(params=["memory", "lmdb"])
def h(request: pytest.FixtureRequest, tmp_path) -> Iterator[Harness]:
    harness = Harness(request.param, tmp_path / "data")
    try:
        yield harness
    finally:
        harness.close()


def report(h: Harness, agent: str, state: str, **body: Any) -> tuple[dict[str, Any], list[Any]]:
    return h.call("report", presence=True, agent=agent, state=state, **body)


def topics(events: list[Any]) -> list[str]:
    return [e.topic for e in events]


def test_every_report_is_an_event_with_the_agents_presence(h: Harness) -> None:
    h.do("register", agent="a", capabilities=["py"])
    reply, events = report(h, "a", "busy", task="t1", message="on it", cost=0.5)
    assert reply == {"agent": "a", "state": "busy", "position": None, "helpers": None, "seq": events[-1].seq}
    body = events[-1].body
    assert events[-1].topic == "agent.busy"
    assert (body["state"], body["task"], body["message"], body["cost"], body["liveness"]) == \
        ("busy", "t1", "on it", 0.5, "alive")
    for state, extra, shown in (("blocked", {"reason": "no creds"}, "blocked"),
                                ("help", {"reason": "tests fail"}, "help"),
                                ("idle", {}, "idle")):
        _, events = report(h, "a", state, **extra)
        assert topics(events) == [f"agent.{state}"] and events[0].body["state"] == shown
    _, events = report(h, "a", "completed", task="t1")
    assert topics(events) == ["agent.completed"]
    assert (events[0].body["state"], events[0].body["completed"], events[0].body["last_task"]) == ("idle", 1, "t1")


def test_a_report_needs_its_field_and_refuses_idle_while_holding_a_task(h: Harness) -> None:
    for state, field in (("busy", "task"), ("completed", "task"), ("blocked", "reason"), ("help", "reason")):
        err = h.refused(BadRequest, "report", agent="a", state=state)
        assert err.details == {"field": field}
    h.do("task_create", id="t1")
    h.do("claim", task="t1", agent="a")
    for state in ("idle", "completed"):
        err = h.refused(Conflict, "report", agent="a", state=state, task="t1")
        assert "complete, fail or release it" in err.message and err.details["held"] == "t1"
    h.do("report", agent="a", state="blocked", reason="flaky CI")  # allowed while holding it


def test_the_idle_queue_is_in_arrival_order_and_an_idle_report_answers_its_place(h: Harness) -> None:
    for agent in ("a", "b", "c"):
        h.do("register", agent=agent)
    assert h.do("agent_list")["idle_queue"] == ["a", "b", "c"]
    assert report(h, "a", "idle")[0]["position"] == 1  # already idle: keeps its place
    report(h, "a", "busy", task="x")
    assert h.do("agent_list")["idle_queue"] == ["b", "c"]
    assert report(h, "a", "idle")[0]["position"] == 3  # a new idle spell: the back
    assert report(h, "b", "completed", task="x")[0]["position"] == 3  # completed: idle again, at the back
    assert h.do("status")["idle_queue"] == ["c", "a", "b"]
    assert [h.do("agent_get", agent=a)["position"] for a in ("a", "b", "c")] == [2, 3, 1]


def test_claiming_makes_an_agent_busy_and_its_last_task_ending_idle_again(h: Harness) -> None:
    for tid in ("t1", "t2", "t3"):
        h.do("task_create", id=tid)
    h.do("register", agent="a")
    _, events = h.call("claim", presence=True, task="t1", agent="a")
    assert topics(events) == ["task.claimed", "agent.busy"] and events[1].body["task"] == "t1"
    assert h.do("agent_get", agent="a")["state"] == "busy"
    _, events = h.call("claim", presence=True, task="t2", agent="a")
    assert topics(events) == ["task.claimed"]  # busy already
    _, events = h.call("complete", presence=True, task="t1", agent="a")
    assert topics(events) == ["task.completed", "agent.completed"]
    assert events[1].body["state"] == "busy" and events[1].body["task"] == "t2"  # still holds t2
    _, events = h.call("fail", presence=True, task="t2", agent="a", error="boom")
    assert topics(events) == ["task.failed", "agent.idle"] and events[1].body["position"] == 1
    view = h.do("agent_get", agent="a")
    assert (view["state"], view["completed"], view["failed"], view["last_task"]) == ("idle", 1, 1, "t2")
    h.do("claim", task="t3", agent="a")
    _, events = h.call("release", presence=True, task="t3", agent="a")
    assert topics(events) == ["task.released", "agent.idle"]


def test_a_completed_report_after_complete_does_not_count_twice(h: Harness) -> None:
    h.do("task_create", id="t1")
    h.do("claim", task="t1", agent="a")
    h.do("complete", task="t1", agent="a")
    report(h, "a", "completed", task="t1", message="done, PR #4")
    report(h, "a", "completed", task="t1")
    view = h.do("agent_get", agent="a")
    assert (view["completed"], view["message"]) == (1, "done, PR #4")
    report(h, "a", "completed", task="t2")  # work done outside the task table counts
    assert h.do("agent_get", agent="a")["completed"] == 2


def test_a_blocked_agent_that_claims_is_busy(h: Harness) -> None:
    h.do("task_create", id="t1")
    report(h, "a", "blocked", reason="waiting for review")
    _, events = h.call("claim", presence=True, task="t1", agent="a")
    assert topics(events) == ["task.claimed", "agent.busy"]
    assert h.do("agent_get", agent="a")["reason"] is None


def test_liveness_alive_evasive_alive_gone(h: Harness) -> None:
    h.do("task_create", id="t1")
    h.do("register", agent="a", ttl=3)
    h.do("claim", task="t1", agent="a")
    assert h.expire(T0 + 1.9, presence=True) == []
    events = h.expire(T0 + 2.0, presence=True)  # 2/3 of its TTL silent: one heartbeat period missed
    assert topics(events) == ["agent.evasive"] and events[0].body["expires_in"] == 1.0
    view = h.do("agent_get", agent="a")
    assert (view["liveness"], view["claims"], view["state"]) == ("evasive", ["t1"], "busy")  # nothing freed
    _, events = h.call("heartbeat", presence=True, agent="a")
    assert topics(events) == ["agent.alive"]
    assert h.do("agent_get", agent="a")["liveness"] == "alive"
    assert topics(h.expire(T0 + 2.0 + 2.0, presence=True)) == ["agent.evasive"]
    events = h.expire(T0 + 2.0 + 3.0, presence=True)
    assert topics(events) == ["task.released", "agent.expired"]
    assert events[-1].body == {"agent": "a", "released": ["t1"], "liveness": "gone", "ts": WALL0 + T0 + 5.0}
    assert h.do("status")["evasive"] == 0 and h.do("agent_list")["agents"] == []


def test_heartbeats_keep_an_agent_alive(h: Harness) -> None:
    h.do("register", agent="a", ttl=3)
    for step in range(1, 20):
        h.at(T0 + step * 1.0).do("heartbeat", agent="a")
        assert h.expire(presence=True) == []


def _caps(h: Harness, caps: dict[str, list[str]]) -> None:
    for agent, have in caps.items():
        h.do("register", agent=agent, capabilities=have)


def test_find_helpers_best_cover_first_then_longest_waiting(h: Harness) -> None:
    _caps(h, {"a": ["py"], "b": ["py", "go", "sql"], "c": ["go", "py"], "d": ["rust"], "e": ["py", "go"]})
    report(h, "e", "busy", task="x")  # not idle
    helpers = h.do("helpers", requires=["py", "go"], threshold=0.5)["helpers"]
    assert [(x["agent"], x["cover"]) for x in helpers] == [("b", 1.0), ("c", 1.0), ("a", 0.5)]
    assert helpers[2]["matched"] == ["py"] and helpers[2]["missing"] == ["go"]
    assert helpers[0]["position"] == 2 and helpers[0]["waiting_since"] == WALL0 + T0
    assert [x["agent"] for x in h.do("helpers", requires=["py", "go"], threshold=1.0)["helpers"]] == ["b", "c"]
    assert [x["agent"] for x in h.do("helpers", requires=["py", "go"], threshold=0.0)["helpers"]] == \
        ["b", "c", "a", "d"]
    assert [x["agent"] for x in h.do("helpers", requires=[], threshold=0.5, limit=2)["helpers"]] == ["a", "b"]


def test_evasive_agents_are_not_helpers(h: Harness) -> None:
    h.do("register", agent="slow", capabilities=["py"], ttl=3)
    h.do("register", agent="fast", capabilities=["py"], ttl=30)
    h.expire(T0 + 2.5)
    assert [x["agent"] for x in h.do("helpers", requires=["py"])["helpers"]] == ["fast"]


def test_a_help_report_answers_with_the_helpers_and_publishes_them(h: Harness) -> None:
    _caps(h, {"a": ["py"], "b": ["go"], "c": ["py", "go"]})
    reply, events = report(h, "a", "help", reason="need go", requires=["go"])
    assert [x["agent"] for x in reply["helpers"]] == ["b", "c"]  # not the asker
    assert events[0].topic == "agent.help" and events[0].body["helpers"] == reply["helpers"]
    assert events[0].body["requires"] == ["go"]


def test_blockers_raise_list_resolve(h: Harness) -> None:
    _caps(h, {"a": ["py"], "ops": ["ops", "k8s"], "b": ["k8s"]})
    h.do("task_create", id="deploy")
    reply, events = h.call("blocker_raise", presence=True, agent="a", type="access",
                           description="no cluster credentials", severity="high",
                           requires=["ops", "k8s"], task="deploy")
    blocker = reply["blocker"]
    assert (blocker["id"], blocker["status"], blocker["agent"], blocker["task"]) == ("blk-1", "open", "a", "deploy")
    assert [(x["agent"], x["cover"]) for x in reply["helpers"]] == [("ops", 1.0), ("b", 0.5)]
    assert topics(events) == ["blocker.raised", "agent.blocked"]
    assert events[0].body["helpers"] == reply["helpers"] and events[0].body["severity"] == "high"
    view = h.do("agent_get", agent="a")
    assert (view["state"], view["reason"], view["blocker"]) == ("blocked", "no cluster credentials", "blk-1")
    assert [b["id"] for b in h.do("blocker_list")["blockers"]] == ["blk-1"]
    assert h.do("status")["blockers"] == 1
    resolved, events = h.call("blocker_resolve", presence=True, blocker="blk-1", agent="ops",
                              resolution="creds in vault")
    assert (resolved["status"], resolved["resolved_by"], resolved["resolution"]) == \
        ("resolved", "ops", "creds in vault")
    assert topics(events) == ["blocker.resolved", "agent.idle"]  # a holds no task: idle again
    assert h.do("blocker_list")["blockers"] == []
    assert [b["id"] for b in h.do("blocker_list", status="resolved")["blockers"]] == ["blk-1"]
    err = h.refused(Conflict, "blocker_resolve", blocker="blk-1")
    assert err.details["resolved_by"] == "ops"
    for bad in ("blk-9", "blk-01", "blk-x", "nope"):
        h.refused(NotFound, "blocker_resolve", blocker=bad)
    h.refused(NotFound, "blocker_raise", agent="a", type="x", description="y", task="missing")


def test_blocker_list_pages_oldest_first(h: Harness) -> None:
    for i in range(5):
        h.do("blocker_raise", agent=f"a{i}", type="t", description=f"d{i}")
    h.do("blocker_resolve", blocker="blk-2")
    page = h.do("blocker_list", status="all", limit=2)
    assert [b["id"] for b in page["blockers"]] == ["blk-1", "blk-2"] and page["more"]
    page = h.do("blocker_list", status="open", after="blk-1", limit=2)
    assert [b["id"] for b in page["blockers"]] == ["blk-3", "blk-4"] and page["more"]
    page = h.do("blocker_list", status="open", after="blk-4")
    assert [b["id"] for b in page["blockers"]] == ["blk-5"] and not page["more"]


def test_a_task_left_waiting_on_a_dead_one_gets_a_blocker_from_the_broker(h: Harness) -> None:
    h.do("task_create", id="build", max_attempts=1)
    h.do("task_create", id="test", depends_on=["build"], requires=["py"])
    h.do("task_create", id="ship", depends_on=["test"])
    h.do("register", agent="fixer", capabilities=["py"])
    h.do("claim", task="build", agent="w")
    _, events = h.call("fail", presence=True, task="build", agent="w", error="compiler crashed")
    raised = [e.body for e in events if e.topic == "blocker.raised"]
    assert len(raised) == 1  # only the direct dependant; "ship" waits on "test", which waits
    assert (raised[0]["agent"], raised[0]["type"], raised[0]["task"], raised[0]["severity"]) == \
        ("zmesh", "dependency_dead", "test", "high")
    assert "'build', which is dead" in raised[0]["description"]
    assert [x["agent"] for x in raised[0]["helpers"]] == ["fixer"]  # "w" is idle but has no py
    assert [b["task"] for b in h.do("blocker_list")["blockers"]] == ["test"]


def test_presence_and_the_idle_queue_survive_a_restart(h: Harness) -> None:
    for agent in ("a", "b", "c"):
        h.do("register", agent=agent, ttl=10)
    h.do("task_create", id="t1")
    h.do("claim", task="t1", agent="b")
    report(h, "c", "blocked", reason="r")
    report(h, "a", "busy", task="x")
    report(h, "a", "idle")
    h.expire(T0 + 7)  # everyone evasive
    before = {a["id"]: (a["state"], a["position"], a["completed"]) for a in h.do("agent_list")["agents"]}
    h.restart(T0 + 500)
    listing = h.do("agent_list")
    assert {a["id"]: (a["state"], a["position"], a["completed"]) for a in listing["agents"]} == before
    assert listing["idle_queue"] == ["a"] and all(a["liveness"] == "alive" for a in listing["agents"])
    assert h.inspect().evasive_at == {a: T0 + 500 + 10 * protocol.EVASIVE_AFTER for a in "abc"}


def test_the_snapshot_and_later_events_lose_nothing_and_count_nothing_twice(h: Harness) -> None:
    from zmesh.client import Roster

    h.do("register", agent="a", capabilities=["py"], ttl=60)
    h.do("task_create", id="t1")
    snap = h.do("snapshot")
    roster = Roster(snap)
    start = len(h.events)
    h.do("register", agent="b", ttl=3)
    h.do("register", agent="c", ttl=60)
    h.do("claim", task="t1", agent="a")
    h.do("complete", task="t1", agent="a")
    report(h, "b", "help", reason="x")
    h.do("blocker_raise", agent="c", type="t", description="d")
    h.do("task_create", id="t2")
    report(h, "c", "idle")
    h.expire(T0 + 2.5)  # b evasive
    h.do("register", agent="d", ttl=60)
    h.expire(T0 + 3.5)  # b gone
    for event in [e for e in h.events if e.seq <= snap["seq"]] + h.events[start:]:
        roster.apply(event)  # the events before the snapshot are ignored
    again = Roster(h.do("snapshot"))
    assert roster.seq == again.seq
    assert roster.tasks == again.tasks == {"waiting": 0, "available": 1, "claimed": 0, "completed": 1, "dead": 0}
    assert roster.idle_queue == again.idle_queue == ["a", "c", "d"]
    assert roster.blockers.keys() == again.blockers.keys() == {"blk-1"}
    fields = ("state", "liveness", "completed", "failed", "task", "last_task")
    assert {a: tuple(r[f] for f in fields) for a, r in roster.agents.items()} == \
        {a: tuple(r[f] for f in fields) for a, r in again.agents.items()}
    assert set(roster.agents) == {"a", "c", "d"}
    assert roster.totals()["idle"] == 3 and roster.totals()["blockers"] == 1


def test_an_idle_note_is_not_shown_once_a_claim_makes_the_agent_busy(h: Harness) -> None:
    """``wait_for_work`` reports idle with "waiting for work"; its claim then made the agent
    busy, and list_agents still said "waiting for work" (found in the new-user trial)."""
    report(h, "a", "idle", message="waiting for work")
    h.do("task_create", id="t1")
    h.do("claim", task="t1", agent="a")
    busy = next(e for e in h.events if e.topic == "agent.busy")
    assert (busy.body["state"], busy.body["task"], busy.body["message"]) == ("busy", "t1", None)
    view = h.do("agent_get", agent="a")
    assert (view["state"], view["message"]) == ("busy", None)
    report(h, "a", "busy", task="t1", message="on it")  # a busy report's own note is shown
    assert h.do("agent_get", agent="a")["message"] == "on it"
