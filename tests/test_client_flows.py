"""The client's flows with no sockets (h11 style: drive the generator, answer its actions),
and the two promises the drivers make about them: a close ends every wait at once, in both
drivers alike; every public method of both clients has a precise return type."""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

import pytest

from zmesh import AsyncClient, Client
from zmesh.client._events import Deliver, Poll, Subscribe, event_stream, watch_flow
from zmesh.client._flows import Invoke, LeaseState, Sleep, WaitFor, request_flow
from zmesh.client._inbox import Inbox
from zmesh.client._protocol import Call, ClientCore, Follow, Recv, Send
from zmesh.errors import LeaseExpired, NoReply, Unreachable


class FakeLink:
    """What a flow reads of its client, without a client."""

    def __init__(self) -> None:
        self.agent: str | None = "a"
        self.info: Any = {}
        self._inbox = Inbox()
        self.endpoint = "tcp://b:1"
        self.closing = False

    def _is_closing(self) -> bool:
        return self.closing

    def _receiving(self, what: str, pump: bool = True) -> None: ...
    def _dispatch_all(self, targets: Any) -> None: ...
    def hello(self) -> Any: ...
    def snapshot(self) -> Any: ...
    def on_message(self, *args: Any) -> Any: ...
    def send(self, *args: Any, **kwargs: Any) -> Any: ...
    def join(self, *args: Any) -> Any: ...


def test_a_request_follows_its_broker_once_with_the_same_id() -> None:
    now = [0.0]
    core = ClientCore(timeout=1.0, clock=lambda: now[0])
    core.follows = True
    flow = core.exchange("hello", {}, "tcp://a:1")
    first = next(flow)
    assert isinstance(first, Send) and isinstance(flow.send(None), Recv)
    now[0] = 1.0
    assert flow.send(None) == Follow("tcp://a:1")
    again = flow.send("tcp://b:2")  # moved: the same frames (same request id) go there
    assert isinstance(again, Send) and again.frames == first.frames
    flow.send(None)
    now[0] = 2.5
    with pytest.raises(Unreachable, match="tcp://b:2"):  # followed once: now it gives up
        flow.send(None)


def test_a_socket_error_is_followed_too_and_raised_when_the_broker_did_not_move() -> None:
    core = ClientCore(timeout=1.0, clock=lambda: 0.0)
    core.follows = True
    flow = core.exchange("hello", {}, "tcp://a:1")
    next(flow)
    flow.send(None)
    assert isinstance(flow.throw(Unreachable("socket error", {})), Follow)
    with pytest.raises(Unreachable, match="socket error"):
        flow.send(None)
    core.follows = False  # given its endpoint: no Follow at all
    flow = core.exchange("hello", {}, "tcp://a:1")
    next(flow)
    with pytest.raises(Unreachable, match="no reply"):
        flow.throw(Unreachable("no reply", {}))


def test_an_event_stream_subscribes_where_hello_says_and_ends_when_a_close_ends_its_sleep() -> None:
    link = FakeLink()
    flow = event_stream(link, since=3)  # type: ignore[arg-type]
    assert next(flow) == Invoke(link.hello)
    assert flow.send({"seq": 3, "pub": ["tcp://*:2"]}) == Subscribe("tcp://b:2")
    replay = flow.send(None)
    assert isinstance(replay, Call) and replay.op == "replay"
    assert isinstance(flow.throw(Unreachable("gone", {})), Sleep)  # an outage: backoff
    with pytest.raises(StopIteration):  # the client closed during the backoff: the stream ends
        flow.send(True)


def test_an_event_stream_resubscribes_after_its_client_followed_the_broker() -> None:
    link = FakeLink()
    flow = event_stream(link, since=3)  # type: ignore[arg-type]
    next(flow)
    flow.send({"seq": 3, "pub": ["tcp://b:2"]})
    assert isinstance(flow.send(None), Call)
    link.endpoint = "tcp://c:1"  # the call followed the broker
    assert flow.send({"events": [], "more": False, "last_seq": 3}) == Invoke(link.hello)
    assert flow.send({"seq": 3, "pub": ["tcp://*:7"]}) == Subscribe("tcp://c:7")
    assert isinstance(flow.send(None), Poll)


def test_watch_retries_its_snapshot_and_a_close_during_the_wait_raises_the_outage() -> None:
    link, heard = FakeLink(), []
    flow = watch_flow(link, on_connection=heard.append, initial=True)  # type: ignore[arg-type]
    assert next(flow) == Invoke(link.snapshot)
    assert flow.throw(Unreachable("gone", {})) == Sleep(0.5)
    assert heard == [False]
    assert flow.send(False) == Invoke(link.snapshot)  # slept: try again, backoff doubles
    assert flow.throw(Unreachable("gone", {})) == Sleep(1.0)
    assert flow.send(False) == Invoke(link.snapshot)
    snap = {"seq": 4, "agents": [], "idle_queue": [], "blockers": [], "tasks": {}}
    initial = flow.send(snap)
    assert isinstance(initial, Deliver) and initial.event[1] is None and heard == [False, True]
    flow = watch_flow(link)  # type: ignore[arg-type]
    next(flow)
    flow.throw(Unreachable("gone", {}))
    with pytest.raises(Unreachable, match="gone"):
        flow.send(True)


def test_keepalive_registers_a_lapsed_lease_again_after_telling_the_owner() -> None:
    lease = LeaseState("a", ["py"], None, 10)
    lease.lease = 7
    told: list[Any] = []
    flow = lease.keepalive_flow(True, lambda: None, told.append)
    beat = next(flow)
    assert isinstance(beat, Call) and beat.op == "heartbeat" and beat.body == {"agent": "a", "lease": 7}
    lapsed = LeaseExpired("lapsed", {})
    assert flow.throw(lapsed) == Invoke(told.append, (lapsed,))
    register = flow.send(None)
    assert isinstance(register, Call) and register.op == "register"
    with pytest.raises(StopIteration):
        flow.send({"agent": "a", "lease": 8, "ttl": 10.0})
    assert (lease.lease, lease.lost) == (8, 1)
    connect = object()
    flow = lease.keepalive_flow(False, connect, None)  # type: ignore[arg-type]
    assert next(flow) == Invoke(connect)  # type: ignore[arg-type]  # not connected: connecting registers


def test_the_heartbeat_stops_when_a_close_ends_its_sleep() -> None:
    lease = LeaseState("a", [], None, 3)
    flow = lease.heartbeat_flow(lambda: None, None)
    assert next(flow) == Sleep(lease.interval)
    assert isinstance(flow.send(False), Invoke)
    assert flow.throw(Unreachable("gone", {})) == Sleep(lease.interval)  # a failed beat: the next comes
    with pytest.raises(StopIteration):
        flow.send(True)


def test_a_request_without_reply_is_no_reply_and_forgets_its_waiter() -> None:
    link = FakeLink()
    flow = request_flow(link, "b", "ping", None, 0.5, {})  # type: ignore[arg-type]
    assert next(flow) == Invoke(link._receiving, ("request",))
    send = flow.send(None)
    assert isinstance(send, Invoke) and send.kwargs["type"] == "request" and send.kwargs["to"] == "b"
    assert link._inbox.waiters  # registered before the send
    wait = flow.send({"id": "msg-1"})
    assert isinstance(wait, WaitFor) and wait.timeout == 0.5
    with pytest.raises(NoReply):
        flow.send(None)
    assert not link._inbox.waiters


def test_aclose_ends_a_sleep_at_once_as_close_does() -> None:
    """The drift this layout fixed: AsyncClient slept out its backoff after aclose."""
    sync = Client("tcp://127.0.0.1:1")
    sync._stop.set()
    t0 = time.monotonic()
    assert sync._act(Sleep(30)) is True and time.monotonic() - t0 < 1

    async def run() -> float:
        client = AsyncClient("tcp://127.0.0.1:1")
        sleeping = asyncio.create_task(client._act(Sleep(30)))
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        await client.aclose()
        assert await sleeping is True
        return time.monotonic() - t0
    assert asyncio.run(run()) < 1


def test_every_public_method_has_a_precise_return_type() -> None:
    for cls in (Client, AsyncClient):
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            if name.startswith("_"):
                continue
            ret = inspect.signature(fn).return_annotation
            assert ret is not inspect.Signature.empty, f"{cls.__name__}.{name} has no return type"
            assert "Any" not in str(ret), f"{cls.__name__}.{name} returns {ret}"
    assert inspect.signature(Client.claim).return_annotation == "Claim | None"
    assert inspect.signature(Client.task).return_annotation == "Task"

