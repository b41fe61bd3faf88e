"""The reply types of zmesh/protocol/records.py against a real broker: every op is asked, and
each reply (with every record nested in it) must have exactly the keys its TypedDict declares,
each value of the declared type; every record type and every optional key must turn up at
least once, so a type can neither drift from the wire nor declare what the wire never sends."""

from __future__ import annotations

import itertools
import types
import typing
from typing import Any, Union, get_args, get_origin, get_type_hints

import zmq

from zmesh import Client, protocol
from zmesh.protocol import records
from zmesh.testing import BrokerProcess

from .conftest import wait_for


class Raw:
    """Requests on a bare DEALER: the reply body as the broker sent it, no client in between."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.ids = itertools.count(1)
        self.replies: dict[str, list[Any]] = {}

    def send(self, op: str, **body: Any) -> bytes:
        req_id = b"r%d" % next(self.ids)
        self.sock.send_multipart(protocol.encode_request(req_id, op, body))
        return req_id

    def recv(self, op: str, req_id: bytes, timeout: float = 10.0) -> Any:
        while True:
            assert self.sock.poll(timeout * 1000), f"no reply to {op}"
            reply = protocol.decode_reply(self.sock.recv_multipart())
            if reply.req_id == req_id:
                break
        assert reply.ok, (op, reply.body)
        self.replies.setdefault(op, []).append(reply.body)
        return reply.body

    def __call__(self, op: str, **body: Any) -> Any:
        return self.recv(op, self.send(op, **body))

    def close(self) -> None:
        self.sock.close(0)


class Shapes:
    """Checks values against the record types, remembering which types and optional keys it saw."""

    def __init__(self) -> None:
        self.types: set[str] = set()
        self.optional: set[tuple[str, str]] = set()

    def check(self, value: Any, tp: Any, where: str) -> None:
        origin, args = get_origin(tp), get_args(tp)
        if tp is Any:
            return
        if typing.is_typeddict(tp):
            assert isinstance(value, dict), f"{where}: {value!r} is not a {tp.__name__}"
            self.types.add(tp.__name__)
            required, optional = tp.__required_keys__, tp.__optional_keys__
            missing, extra = required - set(value), set(value) - required - optional
            assert not missing and not extra, \
                f"{where} ({tp.__name__}): keys missing {sorted(missing)}, keys not declared {sorted(extra)}"
            self.optional.update((tp.__name__, k) for k in optional & set(value))
            hints = get_type_hints(tp)
            for key, item in value.items():
                self.check(item, hints[key], f"{where}.{key}")
        elif origin in (Union, types.UnionType):
            if value is None:
                assert type(None) in args, f"{where}: None where {tp} is due"
                return
            self.check(value, next(a for a in args if a is not type(None)), where)
        elif origin is list:
            assert isinstance(value, list), f"{where}: {value!r} is not a list"
            for i, item in enumerate(value):
                self.check(item, args[0], f"{where}[{i}]")
        elif origin is dict:
            assert isinstance(value, dict), f"{where}: {value!r} is not a dict"
            for key, item in value.items():
                self.check(item, args[1], f"{where}[{key!r}]")
        elif tp is float:
            assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} not a number"
        elif tp is int:
            assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r} not an int"
        else:
            assert isinstance(value, tp), f"{where}: {value!r} is not {tp.__name__}"


def _tasks_agents_reservations(raw: Raw, tmp: str) -> None:
    """Every op but the message ones, in states that make each record and optional key appear."""
    raw("hello")
    raw("register", agent="helper", capabilities=["py", "go"], ttl=30)
    raw("heartbeat", agent="helper")
    raw("report", agent="helper", state="idle")
    raw("helpers", requires=["py"])
    raw("register", agent="gone", ttl=30)
    raw("unregister", agent="gone")
    raw("task_create", id="t1", data={"x": 1})
    raw("task_create", id="t2", depends_on=["t1"])
    raw("task_create", id="t3", priority=5)
    raw("task_create", id="t4", max_attempts=1)
    raw("task_create", id="t5", depends_on=["t4"])
    grant = raw("claim", task="t1", agent="w", ttl=30)
    raw("task_get", task="t1")
    raw("renew", task="t1", agent="w", token=grant["token"])
    raw("complete", task="t1", agent="w", token=grant["token"], result="done")
    raw("claim_next", agent="w")  # t3: with its task_record
    raw("release", task="t3", agent="w")
    raw("claim", task="t4", agent="w")
    raw("fail", task="t4", agent="w", error="boom")  # dead: t5 waits on it, a blocker is raised
    raw("task_list")
    raw("publish", topic="x.y", data={"a": 1}, agent="w")
    raw("report", agent="w", state="help", reason="stuck", requires=["py"])
    raw("agent_get", agent="w")
    raised = raw("blocker_raise", agent="w", type="dependency", description="waits", requires=["py"])
    raw("blocker_resolve", blocker=raised["blocker"]["id"], agent="helper", resolution="fixed")
    raw("blocker_list", status="all")
    raw("snapshot")
    raw("agent_list")
    raw("status")
    raw("health")
    raw("replay", since=0, limit=5)
    raw("reserve", agent="w", paths=["src/**"], ttl=30)
    waiting = raw.send("reserve", agent="helper", paths=["src/a.py"], wait_s=30)
    wait_for(lambda: raw("reservations")["waiting"], what="a reserve waiting in the queue")
    raw("release_paths", agent="w")
    raw.recv("reserve", waiting)
    raw("release_paths", agent="helper", paths=["src/a.py"])
    raw("admin_purge", status="dead")  # t4 kept: t5 waits on it
    raw("admin_requeue", task="t4")  # a history entry with attempts
    raw("admin_purge", task="t2")
    raw("audit", limit=5)
    raw("backup", dest=f"{tmp}/backup")


def test_every_reply_has_exactly_the_keys_its_record_type_declares(broker: BrokerProcess, tmp_path: Any) -> None:
    raw = Raw(broker.endpoint)
    inbox = Client(broker.endpoint, agent="inbox", timeout=10).connect()
    try:
        _tasks_agents_reservations(raw, str(tmp_path))
        # messages: a push to a connected agent, its inbox, acks, dead letters
        sent = raw("send", subject="hi", body={"b": 1}, to="inbox", requires_ack=True, tags=["t"], **{"from": "w"})
        pushed = inbox.receive(timeout=10)
        assert pushed is not None
        raw("send", subject="all", group="crew", **{"from": "w"})
        raw("group_join", agent="inbox", group="crew")
        raw("group_leave", agent="inbox", group="crew")
        raw("message_list", agent="inbox")
        raw("message_list")
        raw("message_get", id=sent["id"])
        raw("mark_read", agent="inbox", ids=[sent["id"], "msg-999"])
        raw("unacked")
        raw("ack", agent="inbox", id=sent["id"], note="seen")
        dying = raw("send", subject="unacked", to="inbox", requires_ack=True, ack_wait=0.1, max_deliver=1)
        wait_for(lambda: raw("dead_letters")["dead"], what="a dead letter")
        raw("requeue", id=dying["id"])
        raw("msgstats")
        raw("task_create", id="t9")
        raw("assign", agent="inbox", task="t9")
        raw("admin_release", task="t9")
        raw("admin_release", agent="inbox")

        assert set(raw.replies) == set(protocol.OPS), f"ops not asked: {sorted(set(protocol.OPS) - set(raw.replies))}"
        assert set(records.REPLIES) == set(protocol.OPS)
        shapes = Shapes()
        for op, bodies in raw.replies.items():
            for i, body in enumerate(bodies):
                shapes.check(body, records.REPLIES[op], f"{op}#{i}")
        shapes.check(pushed.raw, records.PushedMessage, "push")

        declared = {name for name in records.__all__ if typing.is_typeddict(getattr(records, name))}
        assert declared - shapes.types == set(), "record types no reply showed"
        optional = {(name, key) for name in declared for key in getattr(records, name).__optional_keys__}
        assert optional - shapes.optional == set(), "optional keys no reply carried"
    finally:
        inbox.close()
        raw.close()
