# ruff: noqa: F811
"""The predecessor notifier's agents, unchanged, against a real ``zmesh gateway`` over a real
broker: their payloads, as their client built them, get 2xx.

The predecessor's client (a 2025 Python script) sent one body with every call, whatever the
endpoint: ``session_id, status, timestamp, last_task, capabilities, cost_spent,
tasks_completed, waiting_since, message`` (REQUIREMENTS part A), with ``timestamp`` from
``datetime.utcnow().isoformat()`` (no zone, microseconds) and ``waiting_since`` as an ISO
8601 string, with ``Z`` or without, or null. Its broadcast put the message in the query
string: ``POST /broadcast?message=...``. :class:`Predecessor` builds exactly those.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from typing import Any

import pytest

from zmesh import Client

# gw and ops are test_gateway's fixtures: each test names them as arguments (F811 is that idiom)
from .test_gateway import Gateway, agent_row, gw, ops  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def utcnow_isoformat() -> str:
    """What the predecessor's ``datetime.utcnow().isoformat()`` gave: UTC, no zone."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat()


class Predecessor:
    """The predecessor's agent client: every call carries the whole status body."""

    def __init__(self, gw: Gateway, session_id: str, capabilities: list[str]) -> None:
        self.gw, self.session_id, self.capabilities = gw, session_id, capabilities
        self.last_task: str | None = None
        self.cost_spent, self.tasks_completed = 0.0, 0
        self.waiting_since: str | None = None

    def body(self, status: str, message: str | None) -> dict[str, Any]:
        return {"session_id": self.session_id, "status": status, "timestamp": utcnow_isoformat(),
                "last_task": self.last_task, "capabilities": self.capabilities, "cost_spent": self.cost_spent,
                "tasks_completed": self.tasks_completed, "waiting_since": self.waiting_since, "message": message}

    def report(self, status: str, message: str | None = None) -> tuple[int, Any]:
        return self.gw.request("POST", f"/agent/{status}", self.body(status, message))


def test_the_five_reports_as_the_predecessor_sent_them(gw: Gateway, ops: Client) -> None:
    ops.create_task("task-42")
    alice = Predecessor(gw, "agent-alice", ["python", "sql"])
    alice.waiting_since = "2025-11-12T13:00:00Z"
    status, got = alice.report("idle", "ready for work")
    assert status == 200, got
    assert got["state"] == "idle" and got["position"] == 1
    assert got["ignored"] == ["timestamp", "tasks_completed", "waiting_since"]
    # waiting_since without a zone (UTC), as utcnow().isoformat() wrote it
    bob = Predecessor(gw, "agent-bob", ["python"])
    bob.waiting_since = "2025-11-12T13:00:00"
    assert bob.report("idle", "ready")[0] == 200

    alice.last_task, alice.waiting_since, alice.cost_spent = "task-42", None, 0.25
    status, got = alice.report("busy", "working on task-42")
    assert status == 200 and got["state"] == "busy", got
    assert got["ignored"] == ["timestamp", "tasks_completed"]
    status, got = alice.report("blocked", "need database credentials")
    assert status == 200 and got["state"] == "blocked", got
    assert agent_row(ops, "agent-alice")["reason"] == "need database credentials"  # type: ignore[index]
    status, got = alice.report("help", "stuck on a flaky test")
    assert status == 200 and got["state"] == "help", got
    assert [h["agent"] for h in got["helpers"]] == ["agent-bob"]
    alice.tasks_completed = 1
    status, got = alice.report("completed", "task-42 done")
    assert status == 200 and got["state"] == "idle", got
    row = agent_row(ops, "agent-alice")
    assert row is not None and row["completed"] == 1 and row["cost"] == 0.25
    assert row["capabilities"] == ["python", "sql"]


def test_assign_with_the_predecessor_body_creates_and_pushes_the_task(gw: Gateway, ops: Client) -> None:
    worker = Predecessor(gw, "agent-w", ["python"])
    assert worker.report("idle", "ready")[0] == 200
    # the coordinator's assign: the same body, naming the agent and the task it hands out
    body = {"session_id": "agent-w", "status": "busy", "timestamp": utcnow_isoformat(), "last_task": "task-7",
            "capabilities": ["python"], "cost_spent": 0.0, "tasks_completed": 0, "waiting_since": None,
            "message": "Fix the login bug\nSteps: see issue 7"}
    status, got = gw.request("POST", "/task/assign", body)
    assert status == 200, got
    assert got["agent"] == "agent-w" and got["task"] == "task-7" and got["created"] is True
    assert "token" not in got
    assert got["ignored"] == ["status", "timestamp", "capabilities", "cost_spent", "tasks_completed"]
    record = ops.task("task-7")
    assert record["owner"] == "agent-w" and record["data"] == {"description": "Fix the login bug\nSteps: see issue 7"}
    work = gw.get("/agent/agent-w/wait?timeout_s=20")
    assert work["kind"] == "task" and work["task"]["id"] == "task-7" and work["assigned"] is True
    # a task that exists is assigned as it is (created: false)
    ops.create_task("task-8", data={"n": 8})
    assert gw.post("/task/complete", {"session_id": "agent-w", "task_id": "task-7"})["status"] == "completed"
    status, got = gw.request("POST", "/task/assign", dict(body, last_task="task-8"))
    assert status == 200 and got["created"] is False, got
    assert ops.task("task-8")["data"] == {"n": 8} and ops.task("task-8")["owner"] == "agent-w"
    # an unknown agent is 404 and no task is made for it
    status, got = gw.request("POST", "/task/assign", dict(body, session_id="nobody", last_task="task-9"))
    assert status == 404, got
    with pytest.raises(Exception, match="not_found|no task"):
        ops.task("task-9")


@pytest.mark.parametrize("raw", [None, b""])
def test_broadcast_with_the_message_in_the_query(gw: Gateway, raw: bytes | None) -> None:
    for agent in ("q1", "q2"):
        assert gw.post("/agent/idle", {"session_id": agent})["state"] == "idle"
    text = "deploy at 5 & freeze"
    status, got = gw.request("POST", "/broadcast?" + urllib.parse.urlencode({"message": text}), raw=raw)
    assert status == 200, got
    assert got["addressed"] == 2 and got["ignored"] == []
    for agent in ("q1", "q2"):
        subjects = [m["subject"] for m in gw.get(f"/agent/{agent}/messages")["messages"]]
        assert subjects == [text]


def test_broadcast_body_forms_and_their_refusals(gw: Gateway) -> None:
    assert gw.post("/agent/idle", {"session_id": "r1"})["state"] == "idle"
    # the predecessor's whole body on broadcast
    body = {"session_id": "coord", "status": "idle", "timestamp": utcnow_isoformat(), "last_task": None,
            "capabilities": [], "cost_spent": 0.0, "tasks_completed": 0, "waiting_since": None,
            "message": "build failed\n\nlog: ..."}
    status, got = gw.request("POST", "/broadcast", body)
    assert status == 200 and got["addressed"] == 1, got
    [msg] = gw.get("/agent/r1/messages")["messages"]
    assert msg["subject"] == "build failed" and msg["body"] == "build failed\n\nlog: ..." and msg["from"] == "coord"
    # the query and the body agreeing, or the query adding what the body lacks
    assert gw.request("POST", "/broadcast?message=hi", {"message": "hi"})[0] == 200
    assert gw.request("POST", "/broadcast?message=hi", {"priority": "high"})[0] == 200
    for path, payload, field in (("/broadcast?message=one", {"message": "two"}, "message"),
                                 ("/broadcast?mesage=typo", None, "mesage"),
                                 ("/broadcast", None, "message"),
                                 ("/broadcast?message=", None, "message"),
                                 ("/broadcast?message=x&priority=urgent", None, "priority"),
                                 ("/broadcast?message=a%00b&session_id=a%0Ab", None, "session_id")):
        status, got = gw.request("POST", path, payload)
        assert status == 422 and got["field"] == field, (path, status, got)
    assert "Traceback" not in gw.log()


BAD_TIMES = ["yesterday", "2025-13-01T00:00:00Z", "1731416400", True, -5, 1e300, "9" * 80, {"t": 1}, [1],
             "2025-11-12T13:00:00\x1b[31m", "1969-12-31T23:59:59Z"]


@pytest.mark.parametrize("field", ["timestamp", "waiting_since"])
def test_times_are_iso_8601_or_unix_seconds_and_nothing_else(gw: Gateway, field: str) -> None:
    for good in ("2025-11-12T13:00:00Z", "2025-11-12T13:00:00", "2025-11-12T13:00:00.123456",
                 "2025-11-12T15:00:00+02:00", "2025-11-12 13:00:00", 1762952400, 1762952400.5, None):
        status, got = gw.request("POST", "/agent/idle", {"session_id": "t1", field: good})
        assert status == 200, (good, got)
    for bad in BAD_TIMES:
        status, got = gw.request("POST", "/agent/idle", {"session_id": "t1", field: bad})
        assert status == 422 and got["field"] == field, (bad, status, got)
        assert "\x1b" not in got["message"], got
    # on every endpoint the predecessor sent them to
    status, got = gw.request("POST", "/broadcast", {"message": "m", field: "not a time"})
    assert status == 422 and got["field"] == field, got
    status, got = gw.request("POST", "/task/assign", {"session_id": "t1", "task_id": "x", field: "nope"})
    assert status == 422 and got["field"] == field, got


def test_openapi_says_what_a_time_field_takes(gw: Gateway) -> None:
    spec = gw.get("/openapi.json")
    schemas = spec["components"]["schemas"]
    for model in ("Report", "Assign", "Broadcast"):
        prop = schemas[model]["properties"]["timestamp"]
        kinds = {option.get("type") for option in prop["anyOf"]}
        assert kinds == {"number", "string", "null"}, (model, prop)
        assert "ISO 8601" in prop["description"]
    params = {p["name"] for p in spec["paths"]["/broadcast"]["post"]["parameters"]}
    assert params == {"message", "session_id", "priority"}
    assert json.dumps(spec)  # the schema is plain JSON
