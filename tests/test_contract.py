"""The contract under bad input, from Python (issue 13): every bad value is a ZmeshError
with a stable code naming the field, never a zmq/lmdb/TypeError/ValueError; a client given
an agent gets the lease it asked for however it is used; the event stream rides through a
broker outage. Each test here failed on the code before the fix it names."""

from __future__ import annotations

import asyncio
import logging
import threading
import math
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zmesh
from zmesh import AsyncClient, Client
from zmesh import protocol
from zmesh.testing import BrokerProcess, free_port

from .conftest import wait_for


# ------------------------------------------------------------------ 1. implicit registration
@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_client_used_without_with_registers_its_own_lease_and_heartbeats(broker, driver: str) -> None:
    """Finding 1: without `with`/connect() the first call used to register implicitly with
    the broker's 30 s default, no capabilities and no heartbeat."""
    admin = Client(broker.endpoint)
    try:
        admin.create_task("t")
        if driver == "sync":
            c: Any = Client(broker.endpoint, agent="a", ttl=0.6, capabilities=["py"], metadata={"k": 1})
            claim = c.claim("t")
        else:
            loop = asyncio.new_event_loop()
            c = AsyncClient(broker.endpoint, agent="a", ttl=0.6, capabilities=["py"], metadata={"k": 1})
            claim = loop.run_until_complete(c.claim("t"))
        assert claim is not None
        [agent] = admin.agents()
        assert (agent["ttl"], agent["capabilities"], agent["metadata"], agent["implicit"]) == \
            (0.6, ["py"], {"k": 1}, False)
        # the heartbeat keeps the claim alive past several TTLs: poll the owner until then
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            assert admin.task("t")["owner"] == "a", "the lease lapsed: no heartbeat"
            if driver == "async":
                loop.run_until_complete(asyncio.sleep(0.1))  # the heartbeat task runs on this loop
            else:
                time.sleep(0.1)
        if driver == "sync":
            c.close()
        else:
            loop.run_until_complete(c.aclose())
            loop.close()
        assert admin.task("t")["status"] == "available"
    finally:
        admin.close()


def test_a_crashed_agent_that_never_used_with_loses_its_claims_after_its_own_ttl(broker, procs) -> None:
    p = procs.python(
        "import sys, zmesh\n"
        "c = zmesh.Client(sys.argv[1], agent='crash', ttl=1.0)\n"
        "c.create_task('t')\n"
        "assert c.claim('t') is not None\n"
        "print('claimed', flush=True)\n"
        "sys.stdin.readline()\n", broker.endpoint)
    assert p.stdout.readline().strip() == "claimed"
    with Client(broker.endpoint) as admin:
        assert admin.agents()[0]["ttl"] == 1.0
        p.kill()
        p.wait(10)
        start = time.monotonic()
        wait_for(lambda: admin.task("t")["status"] == "available", timeout=15, what="lease expiry")
        assert time.monotonic() - start < 10, "released after its own 1 s TTL, not the 30 s default"


# ------------------------------------------------------------------ 2. endpoints
@pytest.mark.parametrize("endpoint", ["bogus", "127.0.0.1:7700", "http://127.0.0.1:7700", "tcp://host",
                                      "tcp://*:7700", "tcp://127.0.0.1:99999", "", "tcp://a b:1"])
@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_a_malformed_endpoint_is_invalid_argument(endpoint: str, cls: type) -> None:
    with pytest.raises(zmesh.InvalidArgument, match="invalid endpoint") as info:
        cls(endpoint)
    assert info.value.details["field"] == "endpoint" and "\n" not in str(info.value)


def test_a_malformed_zmesh_broker_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZMESH_BROKER", "127.0.0.1:7700")
    with pytest.raises(zmesh.InvalidArgument, match="ZMESH_BROKER"):
        Client()
    with pytest.raises(zmesh.InvalidArgument, match="ZMESH_BROKER"):
        AsyncClient()


def test_an_endpoint_libzmq_cannot_resolve_is_not_a_zmq_error() -> None:
    c = Client("tcp://no-such-host.invalid:7700", timeout=0.3)
    try:
        with pytest.raises(zmesh.ZmeshError):
            c.status()
    finally:
        c.close()


# ------------------------------------------------------------------ 6. non-finite numbers
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_ttl_is_refused_not_defaulted(broker, bad: float) -> None:
    with Client(broker.endpoint) as c:
        c.create_task("t")
        with pytest.raises(zmesh.BadRequest, match="'ttl' must be a finite number"):
            c.claim("t", agent="a", ttl=bad)
        with pytest.raises(zmesh.BadRequest, match="'data' holds NaN or infinity"):
            c.create_task("u", data={"x": bad})
        assert c.task("t")["status"] == "available" and c.agents() == []
    with pytest.raises(zmesh.BadRequest, match="ttl"):
        Client(broker.endpoint, agent="a", ttl=bad)


@pytest.mark.parametrize("raw", [b'{"task":"t","agent":"a","ttl":1e999}', b'{"task":"t","agent":"a","ttl":NaN}',
                                 b'{"task":"t","agent":"a","ttl":1e308}',
                                 b'{"task":"t","agent":"a","ttl":99999999999999999999999}'])
def test_non_finite_numbers_are_refused_on_the_wire(broker, raw: bytes) -> None:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(broker.endpoint)
        sock.send_multipart([protocol.VERSION + bytes((5,)) + b"claim" + b"r1", raw])
        assert sock.poll(5000)
        reply = protocol.decode_reply(sock.recv_multipart())
        assert not reply.ok and reply.body["code"] == "bad_request", reply.body
    finally:
        sock.close(0)


# ------------------------------------------------------------------ 7. oversized requests
def test_an_oversized_request_is_refused_at_once_with_the_limit(broker) -> None:
    with Client(broker.endpoint, timeout=5.0) as c:
        start = time.monotonic()
        with pytest.raises(zmesh.TooLarge) as info:
            c.create_task("big", data="x" * protocol.MAX_MESSAGE_BYTES)
        assert time.monotonic() - start < 1.0, "refused before sending, not after the timeout"
        assert info.value.details["limit"] == protocol.MAX_MESSAGE_BYTES
        assert str(protocol.MAX_MESSAGE_BYTES) in str(info.value)


# ------------------------------------------------------------------ 8. events through an outage
def test_events_ride_through_a_broker_outage(tmp_path: Path, make_client, caplog: pytest.LogCaptureFixture) -> None:
    """Finding 8: events() used to raise Unreachable (op replay) once the outage outlasted
    the timeout. Now it waits, logs one notice, and resumes without a gap."""
    caplog.set_level(logging.WARNING, logger="zmesh.client")
    b = BrokerProcess(tmp_path / "data").start()
    try:
        c = make_client(b.endpoint, timeout=0.5)
        first = c.publish("before")
        stream = c.events(["msg."], since=first - 1, idle_check=0.2)
        assert next(stream).seq == first
        b.stop()
        # the stream keeps waiting (a next() here would block until the broker is back), so
        # read it on a thread once the broker is down long enough for the old code to give up
        got: list[Any] = []
        errors: list[BaseException] = []

        def read() -> None:
            try:
                got.append(next(stream))
            except BaseException as exc:  # noqa: BLE001 - reported to the test
                errors.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_for(lambda: any("broker unreachable" in r.getMessage() for r in caplog.records) or errors,
                 timeout=20, what="the outage notice")
        assert not errors, errors
        b2 = BrokerProcess(b.data, port=b.port, pub_port=b.pub_port).start()
        try:
            with Client(b2.endpoint) as p:
                seq = p.publish("after")
            reader.join(30)
            assert not errors, errors
            assert [e.seq for e in got] == [seq] and got[0].topic == "msg.after"
            assert any("broker back" in r.getMessage() for r in caplog.records)
        finally:
            b2.stop()
    finally:
        b.stop()
        b.kill()


@pytest.mark.parametrize("bad", ["no", 0, None, math.nan])
def test_flags_must_be_booleans(broker, bad: Any) -> None:
    """bool("no") is True: a flag that is not a bool is refused, not taken as yes."""
    with pytest.raises(zmesh.InvalidArgument, match="heartbeat must be True or False"):
        Client(broker.endpoint, heartbeat=bad)
    with Client(broker.endpoint) as c, pytest.raises(zmesh.InvalidArgument, match="reconnect"):
        next(c.events(reconnect=bad))


def test_events_with_reconnect_off_raise_unreachable(tmp_path: Path) -> None:
    b = BrokerProcess(tmp_path / "data").start()
    try:
        with Client(b.endpoint, timeout=0.5) as c:
            stream = c.events(since=0, idle_check=0.2, reconnect=False)
            b.stop()
            with pytest.raises(zmesh.Unreachable):
                for _ in stream:
                    pass
    finally:
        b.kill()


def test_events_since_ahead_of_the_broker_names_since(broker) -> None:
    with Client(broker.endpoint) as c:
        with pytest.raises(zmesh.BadRequest, match="since 999 is ahead") as info:
            next(c.events(since=999))
        assert info.value.details["field"] == "since" and info.value.details["last_seq"] == 0


# ------------------------------------------------------------------ the Python API, fuzzed
_BAD = st.one_of(
    st.just(""), st.just("a\nb"), st.just("\x1b[31m"), st.just("x" * 300), st.text(max_size=5),
    st.integers(min_value=-(2**70), max_value=2**70), st.just(2**64), st.floats(allow_nan=True, allow_infinity=True),
    st.none(), st.booleans(), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just({1, 2}), st.just(object()), st.just(b"bytes"), st.just(("t",)), st.just("x" * (protocol.MAX_MESSAGE_BYTES + 1)),
)


def _short(v: Any) -> Any:
    """A wait's bad value as it is, a valid one (or None: forever) cut to 10 ms."""
    valid = v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                          and 0.01 <= v <= 3600)
    return 0.01 if valid else v


def _api_calls(c: Any, r: Any) -> dict[str, Any]:
    """Every public method of the API with one argument at a time replaced by a bad value."""
    return {
        "register": lambda v, w: c.register(v, capabilities=w),
        "register_meta": lambda v, w: c.register("a", metadata=v, ttl=w),
        "create_task": lambda v, w: c.create_task(v, priority=w),
        "create_task_fields": lambda v, w: c.create_task("t", type=v, data=w),
        "create_task_lists": lambda v, w: c.create_task("t2", requires=v, depends_on=w, max_attempts=3),
        "create_task_attempts": lambda v, w: c.create_task("t3", max_attempts=v),
        "claim": lambda v, w: c.claim(v, agent="a", ttl=w),
        "try_claim": lambda v, w: c.try_claim("t", agent=v, ttl=w),
        "claim_next": lambda v, w: c.claim_next(agent="a", capabilities=v, ttl=w),
        "complete": lambda v, w: c.complete("t", agent="a", token=v, result=w),
        "fail": lambda v, w: c.fail("t", agent=v, error=w),
        "release": lambda v, w: c.release(v, agent="a", token=w),
        "renew": lambda v, w: c.renew("t", agent="a", token=v, ttl=w),
        "publish": lambda v, w: c.publish(v, w),
        "task": lambda v, w: c.task(v),
        "tasks": lambda v, w: c.tasks(status=v, limit=w),
        "task_page": lambda v, w: c.task_page(after=v, limit=w),
        "replay": lambda v, w: c.replay(v, limit=w),
        "replay_topics": lambda v, w: c.replay(0, topics=v),
        "heartbeat": lambda v, w: c.heartbeat(v, lease=w),
        "unregister": lambda v, w: c.unregister(v),
        "events": lambda v, w: next(iter(c.events(v, since=w, timeout=0.05))),
        "events_timeout": lambda v, w: next(iter(c.events(since=0, timeout=v, idle_check=w))),
        "events_reconnect": lambda v, w: next(iter(c.events(since=0, timeout=1.0, reconnect=v))),
        "subscribe": lambda v, w: c.subscribe(v, w),
        "client": lambda v, w: Client(c.endpoint, agent=v, ttl=w).close(),
        "client_args": lambda v, w: Client(c.endpoint, capabilities=v, timeout=w).close(),
        "client_meta": lambda v, w: Client(c.endpoint, metadata=v, heartbeat=w).close(),
        # messages (issue 15); ``r`` is an agent: pushes reach only agents
        "send": lambda v, w: c.send(v, w, to="a"),
        "send_address": lambda v, w: c.send("s", to=v, group=w),
        "send_options": lambda v, w: c.send("s", all=True, priority=v, tags=w),
        "send_ack": lambda v, w: c.send("s", to="a", requires_ack=v, max_deliver=w),
        "send_more": lambda v, w: c.send("s", to="a", context=v, expires_in=w),
        "send_ids": lambda v, w: c.send("s", to="a", correlation_id=v, ack_wait=w, sender=v),
        "broadcast": lambda v, w: c.broadcast(v, w),
        "assign": lambda v, w: c.assign(v, w),
        "assign_options": lambda v, w: c.assign("a", "t", ttl=v, queue=w),
        "ack": lambda v, w: c.ack(v, note=w, agent="a"),
        "ack_token": lambda v, w: c.ack("msg-1", token=v, agent=w),
        "messages": lambda v, w: c.messages(agent=v, tail=w),
        "message_page": lambda v, w: c.message_page(group=v, since=w),
        "messages_filters": lambda v, w: c.messages(tag=v, priority=w),
        "messages_more": lambda v, w: c.messages(since_ts=v, unread=w, agent="a"),
        "message": lambda v, w: c.message(v),
        "mark_read": lambda v, w: c.mark_read(v, agent=w),
        "unacked": lambda v, w: c.unacked(agent=v, limit=w),
        "dead_letters": lambda v, w: c.dead_letters(agent=v, limit=w),
        "requeue": lambda v, w: c.requeue(v, agent=w),
        "join": lambda v, w: c.join(v, agent=w),
        "leave": lambda v, w: c.leave(v, agent=w),
        "notify_task": lambda v, w: c.notify_task(v, "s", w),
        "task_updates": lambda v, w: c.subscribe_task_updates(v, task=w),
        "on_message": lambda v, w: r.on_message(v, w),
        "on_task": lambda v, w: r.on_task(v, w),
        "receive": lambda v, w: r.receive(timeout=_short(v)),
        "request": lambda v, w: r.request(v, "s", w, timeout=0.05),
        "request_timeout": lambda v, w: r.request("nobody", "s", timeout=_short(v)),
        "reply": lambda v, w: r.reply(v, w),
        # path reservations (issue 16)
        "reserve": lambda v, w: c.reserve(v, ttl=w, agent="a"),
        "reserve_options": lambda v, w: c.reserve(["x/**"], shared=v, agent=w),
        "release_paths": lambda v, w: c.release_paths(v, agent=w),
        "reservations": lambda v, w: c.reservations(agent=v, path=w),
        "reservation_state": lambda v, w: c.reservation_state(agent=v, path=w),
        "reserve_wait": lambda v, w: c.reserve(["q/**"], wait=v, agent="a"),
    }


def test_the_python_api_answers_bad_values_with_zmesh_errors_only(broker) -> None:
    """Every method, every argument, the classes of bad values the CLI table uses: the
    outcome is a result or a ZmeshError, never TypeError/ValueError/zmq/lmdb from us."""
    with Client(broker.endpoint, timeout=2.0) as c, Client(broker.endpoint, agent="rx", timeout=2.0) as r:
        calls = _api_calls(c, r)
        c.publish("first")  # events(since=0) then returns at once, whatever its timeout

        @settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(st.sampled_from(sorted(calls)), _BAD, _BAD)
        def check(name: str, v: Any, w: Any) -> None:
            try:
                calls[name](v, w)
            except zmesh.ZmeshError as exc:
                assert exc.code and "\n" not in str(exc), repr(exc)
            except StopIteration:
                pass  # events() with a short timeout and nothing to deliver

        check()
        assert c.status()["broker_id"], "the broker survived all of it"


def test_async_api_answers_bad_values_with_zmesh_errors_only(broker) -> None:
    async def run() -> None:
        async with AsyncClient(broker.endpoint, timeout=2.0) as c:
            for call in (lambda: c.claim("t", agent="", ttl=1.0), lambda: c.claim("t", agent="a", ttl=math.nan),
                         lambda: c.create_task("t", requires="python"), lambda: c.create_task("t", data={1}),
                         lambda: c.create_task("t", priority=2**70), lambda: c.task("a\x00b"),
                         lambda: c.publish("bad topic")):
                with pytest.raises(zmesh.ZmeshError):
                    await call()
            with pytest.raises(zmesh.ZmeshError):
                async for _ in c.events(since=-1):
                    pass
    asyncio.run(run())


def test_broker_closed_before_it_bound_writes_no_claim_index(tmp_path: Path) -> None:
    """A Broker made and closed without serving knows no claims: writing its (empty) claim
    index would make the next start believe no task is claimed."""
    from zmesh.broker.loop import Broker
    from zmesh.config import BrokerConfig

    config = BrokerConfig.load(data=str(tmp_path / "d"), bind=[f"tcp://127.0.0.1:{free_port()}"],
                               pub_bind=[f"tcp://127.0.0.1:{free_port()}"], discovery=False, env={})
    b = BrokerProcess(tmp_path / "d").start()
    c = Client(b.endpoint, agent="holder", ttl=60)
    c.create_task("t")
    assert c.claim("t") is not None
    b.kill()  # a crash: the claim is only in the task record
    c.close(unregister=False)
    Broker(config).close()
    b2 = BrokerProcess(tmp_path / "d").start()
    try:
        with Client(b2.endpoint) as admin:
            assert admin.task("t")["owner"] == "holder", "the claim survived"
            assert admin.status()["claims"] == 1
    finally:
        b2.stop()
