"""Messages in the state machine (zmesh/core/messages.py, deliveries.py), driven as the broker
drives it: each request in its own transaction, with the connection it came from as the
batch's caller, the pushes collected as the broker would send them. The broker-level
acceptance tests (tests/test_messages.py) check the same over real sockets."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest

from zmesh import protocol
from zmesh.core import Push, Settings
from zmesh.errors import BadRequest, Conflict, NotFound, StaleToken

from .test_core import T0, Harness


class MsgHarness(Harness):
    """Harness whose requests come from a connection (``route``) and whose pushes are kept."""

    def __init__(self, kind: str, path: Path, settings: Settings | None = None) -> None:
        super().__init__(kind, path, settings or Settings(default_ttl=10.0, event_log_size=1000, ack_wait=5.0,
                                                          message_retention=1000))
        self.pushes: list[Push] = []

    def on(self, route: bytes | None, op: str, **body: Any) -> Any:
        """One request from connection ``route``; returns the reply, keeps its pushes."""
        with self.store.write() as txn:
            b = self.core.batch(txn, self.now())
            b.caller = route
            reply, events = self.core.handle(b, op, protocol.validate(protocol.OPS[op], body))
            self.pushes += b.pushes
        self.events += events
        return reply

    def call(self, op: str, presence: bool = False, **body: Any) -> tuple[Any, list[Any]]:
        with self.store.write() as txn:
            b = self.core.batch(txn, self.now())
            reply, events = self.core.handle(b, op, protocol.validate(protocol.OPS[op], body))
            self.pushes += b.pushes
        self.events += events
        return reply, events

    def expire(self, mono: float | None = None, presence: bool = False) -> list[Any]:
        if mono is not None:
            self.mono = mono
        with self.store.write() as txn:
            b = self.core.batch(txn, self.now())
            events = self.core.expire(b)
            self.pushes += b.pushes
        self.events += events
        return events

    def take(self, agent: str | None = None) -> list[dict[str, Any]]:
        """The push bodies sent so far (to ``agent``), emptied."""
        got = [p for p in self.pushes if agent is None or p.agent == agent]
        self.pushes = [p for p in self.pushes if p not in got]
        return [orjson.loads(p.raw) for p in got]

    def connect(self, agent: str, route: bytes, **register: Any) -> Any:
        return self.on(route, "register", agent=agent, **register)


@pytest.fixture(params=["memory", "lmdb"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MsgHarness]:
    harness = MsgHarness(request.param, tmp_path / "data")
    try:
        yield harness
    finally:
        harness.close()


def send(h: MsgHarness, subject: str = "s", **body: Any) -> dict[str, Any]:
    return h.do("send", subject=subject, **body)  # type: ignore[no-any-return]


def test_a_message_to_an_offline_agent_waits_and_goes_in_priority_then_arrival_order(h: MsgHarness) -> None:
    ids = [send(h, f"m{i}", to="a", priority=p)["id"]
           for i, p in enumerate(["low", "normal", "critical", "normal", "high", "critical"])]
    assert h.pushes == []
    stats = h.do("msgstats")
    assert stats["pending"] == {"critical": 2, "high": 1, "normal": 2, "low": 1} and stats["messages"] == 6
    h.connect("a", b"R1")
    got = h.take("a")
    assert [m["id"] for m in got] == [ids[2], ids[5], ids[4], ids[1], ids[3], ids[0]]
    assert all(m["delivery"] == {"agent": "a", "token": None, "attempt": 1} for m in got)
    assert {p["state"] for p in [h.do("message_get", id=i)["recipients"][0] for i in ids]} == {"delivered"}
    assert h.do("msgstats")["pending"] == dict.fromkeys(protocol.PRIORITIES, 0)


def test_a_push_goes_only_to_its_recipients_connection_and_never_on_pub(h: MsgHarness) -> None:
    h.connect("a", b"RA")
    h.connect("b", b"RB")
    reply = send(h, "secret", to="a", body={"k": 1})
    assert (reply["addressed"], reply["online"], reply["queued"]) == (1, 1, 0)
    assert [(p.agent, p.route) for p in h.pushes] == [("a", b"RA")]
    assert not [e for e in h.events if e.topic.startswith("message.")]


def test_group_capability_and_all_count_live_agents_and_publish_the_message(h: MsgHarness) -> None:
    h.connect("a", b"RA", groups=["ops"], capabilities=["py"])
    h.connect("b", b"RB", capabilities=["py", "go"])
    h.do("register", agent="c")  # live, but no connection: its copy waits
    h.do("group_join", agent="c", group="ops")
    assert send(h, to=None, group="ops")["addressed"] == 2
    assert sorted(p.agent for p in h.pushes) == ["a"]
    h.pushes.clear()
    r = send(h, capability="py")
    assert (r["addressed"], r["online"]) == (2, 2)
    h.pushes.clear()
    r = send(h, all=True)
    assert (r["addressed"], r["online"], r["queued"]) == (3, 2, 1)
    sent = [e for e in h.events if e.topic == "message.sent"]
    assert [e.body["addressed"] for e in sent] == [2, 2, 3]
    assert sent[0].body["to"] == {"kind": "group", "name": "ops"}
    assert h.do("group_leave", agent="c", group="ops") == {"agent": "c", "groups": []}


def test_exactly_one_address_is_required(h: MsgHarness) -> None:
    for body in ({}, {"to": "a", "group": "g"}, {"to": "a", "all": True}):
        err = h.refused(BadRequest, "send", subject="s", **body)
        assert err.details == {"field": "to"}


def test_requires_ack_is_a_claim_redelivered_with_a_new_token_then_dead_lettered(h: MsgHarness) -> None:
    h.connect("a", b"RA")
    mid = send(h, to="a", requires_ack=True, ack_wait=2.0, max_deliver=3)["id"]
    first = h.take("a")[0]["delivery"]
    assert first["token"] is not None and first["attempt"] == 1
    assert h.do("unacked")["deliveries"][0]["token"] == first["token"]
    h.expire(T0 + 2.5)  # ack_wait passed: delivered again, new token
    second = h.take("a")[0]["delivery"]
    assert second["attempt"] == 2 and second["token"] > first["token"]
    err = h.refused(StaleToken, "ack", agent="a", id=mid, token=first["token"])
    assert err.details["current"] == second["token"]
    h.expire(T0 + 5.0)
    assert h.take("a")[0]["delivery"]["attempt"] == 3
    h.on(b"RA", "heartbeat", agent="a")  # keep the lease alive
    h.expire(T0 + 7.5)  # third attempt unacked: dead
    assert h.take("a") == []
    dead = h.do("dead_letters")["dead"]
    assert [(d["id"], d["agent"], d["deliveries"]) for d in dead] == [(mid, "a", 3)]
    assert [e.body["id"] for e in h.events if e.topic == "message.dead"] == [mid]
    assert h.do("message_get", id=mid)["open"] == 0
    assert h.do("requeue", id=mid) == {"id": mid, "requeued": ["a"]}
    again = h.take("a")[0]["delivery"]
    assert again["attempt"] == 1
    ack = h.do("ack", agent="a", id=mid, token=again["token"], note="done")
    assert ack["already"] is False and ack["note"] == "done"
    assert h.do("ack", agent="a", id=mid)["already"] is True
    assert h.do("unacked")["deliveries"] == [] and h.do("dead_letters")["dead"] == []
    rec = h.do("message_get", id=mid)["recipients"][0]
    assert (rec["state"], rec["note"]) == ("acked", "done")
    h.refused(NotFound, "requeue", id=mid)


def test_a_reconnect_redelivers_what_awaits_an_ack_and_the_old_token_is_stale(h: MsgHarness) -> None:
    h.connect("a", b"R1")
    mid = send(h, to="a", requires_ack=True)["id"]
    old = h.take("a")[0]["delivery"]["token"]
    h.on(b"R1", "heartbeat", agent="a")
    assert h.take("a") == []  # same connection: nothing again
    h.on(b"R2", "heartbeat", agent="a")  # a new connection: delivered again there
    pushes = [p for p in h.pushes if p.agent == "a"]
    assert [p.route for p in pushes] == [b"R2"]
    new = h.take("a")[0]["delivery"]["token"]
    assert new > old
    h.refused(StaleToken, "ack", agent="a", id=mid, token=old)
    h.do("ack", agent="a", id=mid, token=new)


def test_a_lapsed_lease_returns_deliveries_to_pending_for_the_next_connection(h: MsgHarness) -> None:
    h.connect("a", b"R1", ttl=1.0)
    mid = send(h, to="a", requires_ack=True, ack_wait=60.0)["id"]
    h.take()
    h.expire(T0 + 2.0)  # the lease lapsed
    rec = h.do("message_get", id=mid)["recipients"][0]
    assert (rec["state"], rec["deliveries"]) == ("pending", 1)
    send(h, to="a", subject="while away")
    assert h.take() == []
    h.connect("a", b"R2")
    assert [(m["id"], m["delivery"]["attempt"]) for m in h.take("a")] == [(mid, 2), ("msg-2", 1)]


def test_deliveries_survive_a_restart_and_go_again_at_the_first_heartbeat(h: MsgHarness) -> None:
    h.connect("a", b"R1")
    mid = send(h, to="a", requires_ack=True)["id"]
    send(h, to="b", subject="for b")
    token = h.take("a")[0]["delivery"]["token"]
    h.restart(T0 + 100.0)
    assert h.core.deliveries.routes == {}
    h.on(b"R1", "heartbeat", agent="a")  # the same client after the restart: a new route for the broker
    got = h.take("a")
    assert [m["id"] for m in got] == [mid] and got[0]["delivery"]["token"] > token
    h.connect("b", b"RB")
    assert [m["subject"] for m in h.take("b")] == ["for b"]


def test_an_undeliverable_push_is_pending_again_without_counting_an_attempt(h: MsgHarness) -> None:
    h.connect("a", b"R1")
    mid = send(h, to="a", requires_ack=True, max_deliver=1)["id"]
    plain = send(h, to="a", subject="plain")["id"]
    pushes, h.pushes = h.pushes, []
    with h.store.write() as txn:
        h.core.undeliverable(h.core.batch(txn, h.now()), pushes)
    assert "a" not in h.core.deliveries.routes
    for i in (mid, plain):
        rec = h.do("message_get", id=i)["recipients"][0]
        assert (rec["state"], rec["deliveries"]) == ("pending", 0)
    assert h.do("unacked")["deliveries"][0]["state"] == "pending"
    h.on(b"R2", "heartbeat", agent="a")
    assert [m["id"] for m in h.take("a")] == [mid, plain]


def test_read_filters_tail_unread_and_mark_read(h: MsgHarness) -> None:
    h.do("register", agent="a", groups=["g"])
    send(h, "one", to="a", tags=["x"], priority="high")
    send(h, "two", group="g", tags=["y"])
    send(h, "three", to="a", tags=["x", "y"], priority="low")
    h.at(T0 + 50)
    send(h, "four", to="b")

    def subjects(**body: Any) -> list[str]:
        return [m["subject"] for m in h.do("message_list", **body)["messages"]]
    assert subjects() == ["one", "two", "three", "four"]
    assert subjects(agent="a") == ["one", "two", "three"]
    assert subjects(group="g") == ["two"]
    assert subjects(tag="y") == ["two", "three"]
    assert subjects(priority="low") == ["three"]
    assert subjects(since=2) == ["three", "four"]
    assert subjects(since_ts=h.now().wall - 1) == ["four"]
    assert subjects(tail=2) == ["three", "four"]
    assert subjects(agent="a", tail=1, tag="x") == ["three"]
    page = h.do("message_list", limit=2)
    assert [m["subject"] for m in page["messages"]] == ["one", "two"] and page["more"] and page["last"] == 2
    assert subjects(agent="a", unread=True) == ["one", "two", "three"]
    with h.store.write() as txn:  # reading writes nothing
        h.core.handle(h.core.batch(txn, h.now()), "message_list",
                      protocol.validate(protocol.OPS["message_list"], {"agent": "a"}))
        assert not txn.dirty
    assert h.do("mark_read", agent="a", ids=["msg-1", "msg-3", "msg-4"]) == \
        {"agent": "a", "marked": 2, "unknown": ["msg-4"]}
    assert subjects(agent="a", unread=True) == ["two"]
    h.refused(BadRequest, "message_list", unread=True)
    h.refused(BadRequest, "message_list", agent="a", group="g")
    h.refused(BadRequest, "message_get", id="nope")


def test_retention_trims_the_oldest_settled_per_address_and_keeps_open_ones(tmp_path: Path) -> None:
    h = MsgHarness("lmdb", tmp_path / "d", Settings(default_ttl=10.0, event_log_size=1000, message_retention=3,
                                                     message_max_age=100.0))
    try:
        send(h, "keep-open", to="a", requires_ack=True)
        for i in range(5):
            send(h, f"m{i}", to="a")
        send(h, "other", to="b")
        kept = [m["subject"] for m in h.do("message_list", agent="a")["messages"]]
        assert kept == ["keep-open", "m3", "m4"]  # 3 per address; the open one is never trimmed
        assert h.do("msgstats")["messages"] == 4
        assert h.do("msgstats")["pending"]["normal"] == 4  # trimmed copies left the pending count
        h.expire(T0 + 200.0)  # past message_max_age: settled ones go
        assert [m["subject"] for m in h.do("message_list")["messages"]] == ["keep-open"]
    finally:
        h.close()


def test_an_expired_message_is_not_delivered(h: MsgHarness) -> None:
    mid = send(h, to="a", expires_in=1.0, requires_ack=True)["id"]
    h.at(T0 + 2.0)
    h.connect("a", b"R")
    assert h.take() == []
    rec = h.do("message_get", id=mid)
    assert rec["recipients"][0]["state"] == "expired" and rec["open"] == 0


def test_assign_claims_on_the_agents_lease_and_pushes_the_claim(h: MsgHarness) -> None:
    h.do("task_create", id="t1")
    h.refused(NotFound, "assign", agent="ghost", task="t1")
    h.do("register", agent="quiet")
    h.refused(Conflict, "assign", agent="quiet", task="t1")
    h.connect("a", b"RA")
    reply = h.do("assign", agent="a", task="t1")
    assert reply["queued"] is False and reply["token"] > 0
    push = h.take("a")[0]
    assert push["type"] == "task.assign" and push["context"]["token"] == reply["token"]
    assert push["context"]["task_record"]["owner"] == "a"
    task = h.do("task_get", task="t1")
    assert (task["owner"], task["token"]) == ("a", reply["token"])
    h.do("task_create", id="t2")
    h.refused(Conflict, "assign", agent="quiet", task="t1")


def test_a_queued_assignment_claims_only_when_delivered(h: MsgHarness) -> None:
    h.do("task_create", id="t1")
    h.do("task_create", id="t2")
    assert h.do("assign", agent="later", task="t1", queue=True)["queued"] is True
    assert h.do("assign", agent="later", task="t2", queue=True)["queued"] is True
    assert h.do("task_get", task="t1")["status"] == "available"  # not held meanwhile
    h.do("claim", task="t2", agent="other")  # t2 goes elsewhere meanwhile
    h.connect("later", b"R")
    got = {m["context"]["task"]: m["context"] for m in h.take("later")}
    assert got["t1"]["claimed"] is True and h.do("task_get", task="t1")["owner"] == "later"
    assert got["t2"]["claimed"] is False and got["t2"]["error"]["code"] == "conflict"
    h.refused(NotFound, "assign", agent="x", task="nope", queue=True)
