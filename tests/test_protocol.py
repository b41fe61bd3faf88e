"""Pure protocol tests: frames, validation, round trips, and the generated docs."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from zmesh import errors
from zmesh import protocol
from zmesh.protocol import DecodeError, Event
from zmesh.protocol.doc import render_markdown

ROOT = Path(__file__).resolve().parent.parent

# one valid body per op: the round-trip test must cover every op in the table
VALID = {
    "hello": {},
    "register": {"agent": "a1", "capabilities": ["py"], "metadata": {"k": 1}, "ttl": 5},
    "heartbeat": {"agent": "a1", "lease": 3},
    "unregister": {"agent": "a1"},
    "task_create": {"id": "t1", "type": "review", "data": {"pr": 1}, "priority": 3,
                    "requires": ["py"], "max_attempts": 2, "depends_on": ["t0"]},
    "claim": {"task": "t1", "agent": "a1", "ttl": 1.5},
    "claim_next": {"agent": "a1", "capabilities": ["py"], "ttl": 2},
    "complete": {"task": "t1", "agent": "a1", "token": 7, "result": [1, 2]},
    "fail": {"task": "t1", "agent": "a1", "token": 7, "error": "boom"},
    "release": {"task": "t1", "agent": "a1", "token": 7},
    "renew": {"task": "t1", "agent": "a1", "token": 7, "ttl": 3},
    "task_get": {"task": "t1"},
    "task_list": {"status": "claimed", "after": "t0", "limit": 10},
    "task_next": {"agent": "w1", "capabilities": ["py"]},
    "agent_list": {},
    "status": {},
    "health": {},
    "replay": {"since": 5, "limit": 10, "topics": ["task."]},
    "publish": {"topic": "deploy.done", "data": {"sha": "abc"}, "agent": "a1"},
    "report": {"agent": "a1", "state": "help", "task": "t1", "reason": "stuck", "message": "hi",
               "cost": 1.25, "requires": ["py"], "threshold": 0.75},
    "agent_get": {"agent": "a1"},
    "snapshot": {},
    "helpers": {"requires": ["py", "go"], "threshold": 0.5, "limit": 5},
    "blocker_raise": {"agent": "a1", "type": "access", "description": "no token", "severity": "high",
                      "requires": ["ops"], "task": "t1", "threshold": 1.0},
    "blocker_resolve": {"blocker": "blk-1", "agent": "a2", "resolution": "granted"},
    "blocker_list": {"status": "all", "after": "blk-1", "limit": 10},
    "send": {"from": "a1", "to": "a2", "subject": "hi", "body": {"k": [1]}, "priority": "critical",
             "type": "request", "category": "ops", "context": {"task": "t1"}, "tags": ["x"], "requires_ack": True,
             "correlation_id": "c1", "expires_in": 60, "ack_wait": 5, "max_deliver": 3},
    "assign": {"agent": "a1", "task": "t1", "ttl": 30, "queue": True, "from": "op", "priority": "high",
               "subject": "do it"},
    "ack": {"agent": "a1", "id": "msg-3", "token": 9, "note": "done"},
    "message_list": {"agent": "a1", "tag": "x", "priority": "low", "since": 2, "since_ts": 1.5, "unread": True,
                     "tail": 5, "limit": 10},
    "message_get": {"id": "msg-1"},
    "mark_read": {"agent": "a1", "ids": ["msg-1", "msg-2"]},
    "unacked": {"agent": "a1", "limit": 5},
    "dead_letters": {"agent": "a1", "limit": 5},
    "requeue": {"id": "msg-1", "agent": "a1"},
    "msgstats": {},
    "group_join": {"agent": "a1", "group": "ops"},
    "group_leave": {"agent": "a1", "group": "ops"},
    "reserve": {"agent": "a1", "paths": ["src/**/*.py", "docs/**"], "mode": "shared", "ttl": 60.0},
    "release_paths": {"agent": "a1", "paths": ["src/**/*.py"]},
    "reservations": {"agent": "a1", "path": "src/x.py"},
    "admin_release": {"task": "t1", "reason": "stuck"},
    "admin_purge": {"status": "dead", "limit": 10},
    "admin_requeue": {"task": "t1"},
    "backup": {"dest": "/var/backups/zmesh/2026-12-04"},
    "audit": {"agent": "a1", "task": "t1", "op": "claim", "result": "conflict", "since": 1.7e9, "before": 40,
              "limit": 10},
}


def test_every_op_has_a_round_trip_case() -> None:
    assert set(VALID) == set(protocol.OPS)


@pytest.mark.parametrize("op", sorted(protocol.OPS))
def test_request_round_trip(op: str) -> None:
    frames = protocol.encode_request(b"rid-1", op, VALID[op])
    req = protocol.decode_request(frames)
    assert req.req_id == b"rid-1" and req.op == op
    for key, value in VALID[op].items():
        assert req.body[key] == value
    # defaults are filled for every field not sent
    assert set(req.body) == set(protocol.OPS[op].by_name)


def test_reply_and_error_round_trip() -> None:
    rep = protocol.decode_reply(protocol.encode_reply(b"r", {"x": 1}))
    assert rep.ok and rep.body == {"x": 1} and rep.req_id == b"r"
    err = protocol.decode_reply(protocol.encode_error(b"r", errors.StaleToken("old", {"token": 3})))
    assert not err.ok
    exc = errors.from_wire(err.body)
    assert isinstance(exc, errors.StaleToken) and exc.details == {"token": 3} and exc.message == "old"


def test_event_round_trip() -> None:
    ev = Event("task.claimed", 2**40 + 3, {"task_id": "t"})
    assert protocol.decode_event(protocol.encode_event(ev)) == ev


def H(op: bytes, rid: bytes = b"r", v: bytes = b"ZM1") -> bytes:
    """A request header: version, op length, op, req_id."""
    return v + bytes((len(op),)) + op + rid


@pytest.mark.parametrize(
    "frames, code",
    [
        ([b"ZM1"], "bad_request"),
        ([H(b"hello")], "bad_request"),
        ([b"ZM1", b"{}"], "bad_request"),
        ([b"ZM1\x09ab", b"{}"], "bad_request"),
        ([H(b"hello"), b"{}", b"extra"], "bad_request"),
        ([H(b"hello", v=b"ZM9"), b"{}"], "unsupported_version"),
        ([H(b"hello", rid=b""), b"{}"], "bad_request"),
        ([H(b"hello", rid=b"x" * 65), b"{}"], "bad_request"),
        ([H(b"nope"), b"{}"], "unknown_op"),
        ([H(b"\xff\xfe"), b"{}"], "unknown_op"),
        ([H(b"claim"), b"{not json"], "bad_request"),
        ([H(b"claim"), b"[1]"], "bad_request"),
        ([H(b"claim"), b'{"task": 1, "agent": "a"}'], "bad_request"),
        ([H(b"claim"), b'{"agent": "a"}'], "bad_request"),
        ([H(b"claim"), b'{"task": "", "agent": "a"}'], "bad_request"),
        ([H(b"claim"), b'{"task": "t", "agent": "a", "ttl": -1}'], "bad_request"),
        ([H(b"claim"), b'{"task": "t", "agent": "a", "bogus": 1}'], "bad_request"),
        ([H(b"claim"), b'{"task": "t", "agent": "a", "ttl": true}'], "bad_request"),
        ([H(b"task_create"), b'{"id": "t", "priority": 1.5}'], "bad_request"),
        ([H(b"task_create"), b'{"id": "t", "requires": ["a", 2]}'], "bad_request"),
        ([H(b"task_list"), b'{"status": "weird"}'], "bad_request"),
        ([H(b"replay"), b'{"since": 18446744073709551615}'], "bad_request"),
        ([H(b"complete"), b'{"task": "t", "agent": "a", "token": 9007199254740993}'], "bad_request"),
        ([H(b"fail"), orjson.dumps({"task": "t", "agent": "a", "error": "e" * 70000})], "too_large"),
        ([H(b"hello"), b"x" * (protocol.MAX_MESSAGE_BYTES + 1)], "too_large"),
        ([H(b"publish"), b'{}'], "bad_request"),
        ([H(b"publish"), b'{"topic": ""}'], "bad_request"),
        ([H(b"publish"), b'{"topic": "has space"}'], "bad_request"),
        ([H(b"publish"), '{"topic": "caf\u00e9"}'.encode()], "bad_request"),
        ([H(b"publish"), b'{"topic": "nul\\u0000"}'], "bad_request"),
        ([H(b"publish"), orjson.dumps({"topic": "t" * (protocol.MAX_TOPIC_CHARS + 1)})], "bad_request"),
        ([H(b"publish"), orjson.dumps({"topic": "t", "data": "d" * protocol.MAX_MESSAGE_DATA_BYTES})],
         "too_large"),
    ],
)
def test_bad_requests_name_the_problem(frames: list[bytes], code: str) -> None:
    with pytest.raises(DecodeError) as info:
        protocol.decode_request(frames)
    assert info.value.error.code == code
    assert info.value.error.message


def test_field_errors_name_the_field() -> None:
    with pytest.raises(DecodeError) as info:
        protocol.decode_request([H(b"claim"), b'{"task": 5, "agent": "a"}'])
    assert info.value.error.details["field"] == "task"
    assert info.value.req_id == b"r"


def test_publish_topic_and_data_limits_are_inclusive() -> None:
    longest = "a." * (protocol.MAX_TOPIC_CHARS // 2)
    data = "d" * (protocol.MAX_MESSAGE_DATA_BYTES - 2)  # a JSON string: two quote bytes
    req = protocol.decode_request([H(b"publish"), orjson.dumps({"topic": longest, "data": data})])
    assert req.body == {"topic": longest, "data": data, "agent": None}


def test_unknown_codes_stay_remote_errors() -> None:
    exc = errors.from_wire({"code": "future_thing", "message": "m"})
    assert type(exc) is errors.RemoteError and exc.code == "future_thing"


def test_exit_codes() -> None:
    assert errors.exit_code(errors.Unreachable()) == 3
    assert errors.exit_code(errors.BadRequest()) == 2
    for cls in (errors.NotFound, errors.Conflict, errors.NotOwner, errors.StaleToken):
        assert errors.exit_code(cls()) == 1


def test_protocol_doc_is_generated_from_the_tables() -> None:
    doc = (ROOT / "docs" / "PROTOCOL.md").read_text()
    assert doc == render_markdown(), "run: python docs/gen_protocol.py"
    for code in errors.WIRE_ERRORS:
        assert f"`{code}`" in doc
    for op in protocol.OPS:
        assert f"### `{op}`" in doc
