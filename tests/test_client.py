"""The clients against a real broker process. Each behaviour is tested once and run
against both drivers: the async one through a thin blocking adapter (one fixture differs)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

import zmesh
from zmesh import AsyncClient, BadRequest, Client
from zmesh.client._events import EventTracker
from zmesh.protocol import Event
from zmesh.testing import free_port

from .conftest import wait_for


def test_contract_example(broker, make_client) -> None:
    with make_client(broker.endpoint, agent="a1", capabilities=["python"], ttl=10.0) as c:
        c.create_task("t1", type="review", data={"pr": 1}, priority=0, requires=["python"])
        claim = c.claim("t1")
        assert isinstance(claim, zmesh.Claim) and claim.task_id == "t1" and claim.token > 0
        assert claim.expires_at is not None and claim.expires_at > time.time()
        c.complete("t1", token=claim.token, result={"ok": True})
        task = c.task("t1")
        assert task["status"] == "completed" and task["result"] == {"ok": True}


def test_lost_race_is_none_and_errors_are_typed(broker, make_client) -> None:
    with make_client(broker.endpoint, agent="a1") as a, make_client(broker.endpoint, agent="a2") as b:
        a.create_task("t1")
        first = a.claim("t1")
        assert first is not None
        assert b.claim("t1") is None
        with pytest.raises(zmesh.Conflict) as info:
            b.try_claim("t1")
        assert info.value.details["holder"] == "a1"
        with pytest.raises(zmesh.NotFound):
            a.claim("nope")
        with pytest.raises(zmesh.NotOwner):
            b.complete("t1")
        with pytest.raises(zmesh.StaleToken):
            a.complete("t1", token=first.token + 1000)
        assert issubclass(zmesh.NotFound, zmesh.ZmeshError)
        a.release("t1", token=first.token)
        second = b.claim("t1")
        assert second is not None and second.token > first.token
        with pytest.raises(zmesh.StaleToken):  # the paused first owner cannot clobber b
            a.complete("t1", token=first.token)


def test_claim_next_and_dependencies(broker, make_client) -> None:
    with make_client(broker.endpoint, agent="w", capabilities=["py"]) as c:
        c.create_task("low", priority=1)
        c.create_task("high", priority=9)
        c.create_task("rust", priority=100, requires=["rust"])
        c.create_task("after", priority=50, depends_on=["low"])
        got = c.claim_next()
        assert got.task_id == "high" and got.task["status"] == "claimed"
        got2 = c.claim_next()
        assert got2.task_id == "low"
        assert c.claim_next() is None
        c.complete("low", token=got2.token)
        assert c.task("after")["status"] == "available"
        assert c.claim_next().task_id == "after"


def test_events_iterator_replays_and_follows(broker, make_client) -> None:
    with make_client(broker.endpoint, agent="a1") as c:
        c.create_task("t1")
        c.claim("t1")
        seen = []
        for ev in c.events(["task."], since=0, timeout=2.0):
            seen.append(ev)
            if len(seen) == 2:
                c.create_task("t2")  # arrives live over PUB
            if len(seen) == 3:
                break
        assert [e.topic for e in seen] == ["task.created", "task.claimed", "task.created"]
        assert seen[2].body["task_id"] == "t2"
        seqs = [e.seq for e in seen]
        assert seqs == sorted(seqs) and len(set(seqs)) == 3


def test_publish_reaches_a_live_subscriber_and_a_late_one_replays_it(broker, make_client) -> None:
    with make_client(broker.endpoint, agent="pub") as p, make_client(broker.endpoint) as s:
        start = p.status()["seq"]
        seq = p.publish("deploy.done", {"sha": "abc"})
        assert seq == start + 1
        live = next(iter(s.events(["msg.deploy."], since=start, timeout=5.0)))
        assert (live.topic, live.seq, live.body["data"], live.body["from"]) == \
            ("msg.deploy.done", seq, {"sha": "abc"}, "pub")
        seq2 = p.publish("other", [1, 2], agent="someone")
        got = [e for e in s.events(["msg."], since=seq, timeout=0.5)]
        assert [(e.seq, e.body["data"], e.body["from"]) for e in got] == [(seq2, [1, 2], "someone")]
        with pytest.raises(BadRequest):
            p.publish("not a topic")


def test_subscribe_callback(broker, make_client) -> None:
    got: list[Event] = []
    with make_client(broker.endpoint, agent="a1") as c:
        c.subscribe(got.append, ["task."], since=0)
        c.create_task("t1")
        wait_for(lambda: any(e.topic == "task.created" for e in got), what="callback event")


def test_heartbeat_keeps_claims_past_ttl(broker, make_client) -> None:
    with make_client(broker.endpoint, agent="hb", ttl=0.5) as c:
        c.create_task("t1")
        claim = c.claim("t1")
        end = time.monotonic() + 2.0  # four TTLs: only heartbeats can keep it
        while time.monotonic() < end:
            assert c.task("t1")["owner"] == "hb"
            time.sleep(0.1)
        c.complete("t1", token=claim.token)


def test_without_heartbeat_the_lease_lapses(broker, make_client) -> None:
    with make_client(broker.endpoint, timeout=2.0) as admin:
        with make_client(broker.endpoint, agent="quiet", ttl=0.3, heartbeat=False) as c:
            c.create_task("t1")
            claim = c.claim("t1")
            wait_for(lambda: admin.task("t1")["status"] == "available", timeout=5, what="lease expiry")
            with pytest.raises(zmesh.LeaseExpired) as lapsed:  # not a stale token (finding 9)
                c.complete("t1", token=claim.token)
            assert lapsed.value.details["reason"] == "lease_expired" and lapsed.value.details["holder"] is None
            with pytest.raises(zmesh.LeaseExpired):
                c.heartbeat(lease=c.lease)
            c.close(unregister=False)


def test_keepalive_renews_and_registers_a_lapsed_lease_again(broker, make_client) -> None:
    """keepalive() is the heartbeat, run by the owner (the HTTP gateway renews an agent's
    lease on each request): it keeps the claim while called, and after a lapse it registers
    the agent again and tells on_lease_lost."""
    lost: list[Exception] = []
    with make_client(broker.endpoint, timeout=2.0) as admin:
        with make_client(broker.endpoint, agent="owner-run", ttl=0.4, heartbeat=False,
                         on_lease_lost=lost.append) as c:
            c.create_task("t1")
            c.claim("t1")
            end = time.monotonic() + 1.6  # four TTLs: only the keepalives can keep it
            while time.monotonic() < end:
                c.keepalive()
                assert admin.task("t1")["owner"] == "owner-run"
                time.sleep(0.1)
            assert lost == []
            wait_for(lambda: admin.task("t1")["status"] == "available", timeout=5, what="lease expiry")
            c.keepalive()
            assert len(lost) == 1 and isinstance(lost[0], zmesh.LeaseExpired)
            assert [a["id"] for a in admin.agents()] == ["owner-run"]  # registered again
            c.heartbeat(lease=c.lease)  # the new lease is live


def test_unreachable_is_a_clear_error_after_the_timeout(make_client) -> None:
    c = make_client(f"tcp://127.0.0.1:{free_port()}", timeout=0.5)
    start = time.monotonic()
    with pytest.raises(zmesh.Unreachable) as info:
        c.connect()
    assert time.monotonic() - start < 3.0
    assert "within 0.5 s" in str(info.value)


def test_close_unregisters_and_releases(broker, make_client) -> None:
    with make_client(broker.endpoint) as admin:
        with make_client(broker.endpoint, agent="leaver") as c:
            c.create_task("t1")
            c.claim("t1")
        task = admin.task("t1")
        assert task["status"] == "available" and task["owner"] is None
        assert all(a["id"] != "leaver" for a in admin.agents())


def test_calls_survive_a_broker_restart(broker, make_client) -> None:
    with make_client(broker.endpoint, agent="a1", ttl=5, timeout=10) as c:
        c.create_task("t1")
        claim = c.claim("t1")
        broker.stop()
        broker.start()
        assert c.task("t1")["owner"] == "a1"  # reconnects by itself
        c.complete("t1", token=claim.token)
        c.create_task("t2")
        assert c.claim("t2").token > claim.token


def test_lost_lease_is_surfaced_and_re_registered(broker, procs) -> None:
    """An agent process frozen (SIGSTOP) past its TTL: on waking its heartbeat is refused,
    on_lease_lost fires, the client registers again and its old token is refused."""
    code = r"""
import sys, time, zmesh
lost = []
c = zmesh.Client(sys.argv[1], agent="sleepy", ttl=0.6, on_lease_lost=lost.append).connect()
c.create_task("t1")
claim = c.claim("t1")
print("ready", flush=True)
sys.stdin.readline()
deadline = time.monotonic() + 10
while not lost and time.monotonic() < deadline:
    time.sleep(0.05)
print("lost", lost[0].code if lost else None, flush=True)
try:
    c.complete("t1", token=claim.token)
    print("complete ok", flush=True)
except zmesh.ZmeshError as e:
    print("complete", e.code, flush=True)
print("heartbeat", c.heartbeat(lease=c.lease)["agent"], flush=True)
c.close()
"""
    p = procs.python(code, broker.endpoint)
    assert p.stdout.readline().strip() == "ready"
    with Client(broker.endpoint) as admin:
        os.kill(p.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: admin.task("t1")["status"] == "available", timeout=10, what="expiry")
        finally:
            os.kill(p.pid, signal.SIGCONT)
        p.stdin.write("go\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=30)
    lines = out.splitlines()
    assert lines[0] == "lost lease_expired", err
    assert lines[1] == "complete lease_expired"  # the lapse, not a stale token (finding 9)
    assert lines[2] == "heartbeat sleepy"


def test_event_tracker_rules() -> None:
    t = EventTracker(["task."], since=3)
    assert t.classify(Event("task.x", 3, {})) == "dup"
    assert t.classify(Event("task.x", 4, {})) == "next"
    assert t.classify(Event("task.x", 6, {})) == "gap"
    out = t.replayed({"events": [{"topic": "agent.x", "seq": 4, "body": {}},
                                 {"topic": "task.y", "seq": 5, "body": {}}], "more": False})
    assert [e.seq for e in out] == [5] and t.last == 5
    assert t.classify(Event("task.x", 6, {})) == "next"


def test_async_client_natively(broker) -> None:
    async def main() -> None:
        async with AsyncClient(broker.endpoint, agent="aa", ttl=5) as c:
            await c.create_task("t1")
            claim = await c.claim("t1")
            await c.complete("t1", token=claim.token)
            topics = []
            async for ev in c.events(since=0, timeout=1.0):
                topics.append(ev.topic)
                if ev.topic == "task.completed":
                    break
            assert topics[-1] == "task.completed" and "task.claimed" in topics
    asyncio.run(main())


def test_callback_subscription_survives_a_broker_restart(broker, make_client) -> None:
    got: list[Event] = []
    with make_client(broker.endpoint, timeout=1.0) as c:
        c.subscribe(got.append, ["task."], since=0)
        c.create_task("before")
        wait_for(lambda: [e for e in got if e.body["task_id"] == "before"], what="first event")
        broker.stop()
        broker.start()
        c.create_task("after")
        wait_for(lambda: [e for e in got if e.body["task_id"] == "after"], timeout=15, what="event after restart")
        seqs = [e.seq for e in got]
        assert seqs == sorted(set(seqs)), "in order, no duplicates"


@pytest.mark.parametrize("dialled, pubs, expected", [
    ("tcp://10.1.2.3:7700", ["tcp://*:7701", "ipc:///d/zmesh-pub.ipc"], "tcp://10.1.2.3:7701"),
    ("tcp://broker.lan:7700", ["tcp://0.0.0.0:7701"], "tcp://broker.lan:7701"),
    ("tcp://[fe80::1%eth0]:7700", ["tcp://[::]:7701"], "tcp://[fe80::1%eth0]:7701"),
    ("tcp://127.0.0.1:7700", ["tcp://127.0.0.1:7701"], "tcp://127.0.0.1:7701"),
    ("ipc:///d/zmesh.ipc", ["tcp://*:7701", "ipc:///d/zmesh-pub.ipc"], "ipc:///d/zmesh-pub.ipc"),
])
def test_pub_endpoint_uses_the_dialled_host(dialled: str, pubs: list[str], expected: str) -> None:
    from zmesh.client._protocol import resolve_pub

    assert resolve_pub(dialled, pubs) == expected


def test_pub_endpoint_missing_transport_is_a_protocol_error() -> None:
    from zmesh.client._protocol import resolve_pub

    with pytest.raises(zmesh.ProtocolError, match="no PUB endpoint on ipc"):
        resolve_pub("ipc:///x", ["tcp://*:1"])


def test_event_flow_replays_a_lost_tail_when_the_heartbeat_is_ahead() -> None:
    """Pure flow test: the last event never arrived over PUB; the PUB heartbeat says the
    broker is at seq 5 while we are at 3, so the flow asks for a replay and delivers 4, 5."""
    from zmesh import protocol
    from zmesh.client._events import Deliver, Poll, event_flow
    from zmesh.client._protocol import Call

    clock = [0.0]
    flow = event_flow(EventTracker([], since=3), replay_first=False, timeout=None,
                      idle_check=1.0, clock=lambda: clock[0])
    assert isinstance(next(flow), Poll)
    action = flow.send(protocol.encode_event(Event(protocol.HEARTBEAT_TOPIC, 5, {})))
    assert isinstance(action, Call) and action.op == "replay" and action.body["since"] == 3
    body = {"events": [{"topic": "task.a", "seq": 4, "body": {}}, {"topic": "task.b", "seq": 5, "body": {}}],
            "more": False, "last_seq": 5}
    first = flow.send(body)
    second = flow.send(None)
    assert [first.event.seq, second.event.seq] == [4, 5] and isinstance(first, Deliver)
    assert isinstance(flow.send(None), Poll)
    # a heartbeat that is not ahead asks for nothing
    assert isinstance(flow.send(protocol.encode_event(Event(protocol.HEARTBEAT_TOPIC, 5, {}))), Poll)


def test_event_flow_ends_after_timeout_without_deliveries() -> None:
    from zmesh import protocol
    from zmesh.client._events import Poll, event_flow

    clock = [0.0]
    flow = event_flow(EventTracker([], since=None), replay_first=False, timeout=2.0,
                      idle_check=1.0, clock=lambda: clock[0])
    assert isinstance(next(flow), Poll)
    clock[0] = 1.0
    assert isinstance(flow.send(protocol.encode_event(Event(protocol.HEARTBEAT_TOPIC, 0, {}))), Poll)
    clock[0] = 2.5  # heartbeats keep arriving but nothing is delivered: the timeout holds
    with pytest.raises(StopIteration):
        flow.send(protocol.encode_event(Event(protocol.HEARTBEAT_TOPIC, 0, {})))
