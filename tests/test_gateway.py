"""``zmesh gateway`` as a real process, driven by a real HTTP client (the standard library's),
against a real broker: every endpoint, the predecessor notifier's bodies, bad input, the
broker away, and the lease of an HTTP agent."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from zmesh import Client
from zmesh import protocol
from zmesh.testing import BrokerProcess, free_port

from .conftest import wait_for

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent


class Gateway:
    def __init__(self, broker: BrokerProcess, tmp: Path, *extra: str, timeout: float = 5.0) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"gateway-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zmesh", "--broker", broker.endpoint, "--timeout", str(timeout), "gateway",
             "--listen", f"127.0.0.1:{self.port}", *extra],
            stdout=subprocess.DEVNULL, stderr=open(self.log_path, "wb"), stdin=subprocess.DEVNULL)
        wait_for(self._up, timeout=60, what="the gateway answering")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway exited {self.proc.returncode}: {self.log()}")
        try:
            with urllib.request.urlopen(self.base + "/openapi.json", timeout=1):
                return True
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                timeout: float = 30, token: str | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"content-type": "application/json"}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        status, got = self.request("POST", path, body, **kw)
        assert status == 200, (path, status, got)
        return got

    def get(self, path: str, **kw: Any) -> Any:
        status, got = self.request("GET", path, **kw)
        assert status == 200, (path, status, got)
        return got

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def gw(broker: BrokerProcess, tmp_path: Path) -> Iterator[Gateway]:
    g = Gateway(broker, tmp_path)
    try:
        yield g
    finally:
        g.stop()


@pytest.fixture
def ops(broker: BrokerProcess) -> Iterator[Client]:
    c = Client(broker.endpoint)
    try:
        yield c
    finally:
        c.close()


def agent_row(client: Client, agent: str) -> dict[str, Any] | None:
    return next((a for a in client.agents() if a["id"] == agent), None)


ENDPOINTS = {("post", "/agent/{state}"), ("get", "/status"), ("post", "/task/assign"), ("post", "/broadcast"),
             ("post", "/task/claim"), ("post", "/task/complete"), ("post", "/task/fail"), ("post", "/task/release"),
             ("get", "/agent/{session_id}/wait"), ("get", "/agent/{session_id}/messages"),
             ("post", "/message/send"), ("post", "/message/ack"), ("post", "/paths/reserve"),
             ("post", "/paths/release")}


def test_openapi_lists_every_endpoint_with_field_rules(gw: Gateway) -> None:
    spec = gw.get("/openapi.json")
    assert {(m, p) for p, methods in spec["paths"].items() for m in methods} == ENDPOINTS
    report = spec["components"]["schemas"]["Report"]
    assert report["required"] == ["session_id"]
    assert report["properties"]["session_id"]["maxLength"] == protocol.MAX_ID_BYTES
    assert report["additionalProperties"] is False
    for field in ("session_id", "status", "timestamp", "last_task", "capabilities", "cost_spent",
                  "tasks_completed", "waiting_since", "message"):
        assert field in report["properties"], field


def test_the_predecessor_notifier_calls(gw: Gateway, ops: Client) -> None:
    ops.create_task("t1")
    got = gw.post("/agent/idle", {"session_id": "h1", "status": "idle", "timestamp": time.time(),
                                  "capabilities": ["python", "sql"], "cost_spent": 0.5, "tasks_completed": 2,
                                  "waiting_since": time.time(), "message": "ready"})
    assert got["agent"] == "h1" and got["state"] == "idle" and got["position"] == 1
    assert got["ignored"] == ["timestamp", "tasks_completed", "waiting_since"]
    row = agent_row(ops, "h1")
    assert row is not None and row["capabilities"] == ["python", "sql"] and row["cost"] == 0.5
    status = gw.get("/status")
    assert status["idle_queue"][0]["agent"] == "h1" if isinstance(status["idle_queue"][0], dict) \
        else status["idle_queue"][0] == "h1"
    assert gw.post("/agent/busy", {"session_id": "h1", "last_task": "t1"})["state"] == "busy"
    assert gw.post("/agent/blocked", {"session_id": "h1", "message": "need a key"})["state"] == "blocked"
    assert agent_row(ops, "h1")["reason"] == "need a key"  # type: ignore[index]
    gw.post("/agent/idle", {"session_id": "h2", "capabilities": ["python"]})
    helped = gw.post("/agent/help", {"session_id": "h1", "reason": "stuck", "requires": ["python"]})
    assert helped["state"] == "help" and [h["agent"] for h in helped["helpers"]] == ["h2"]
    assert gw.post("/agent/completed", {"session_id": "h1", "last_task": "t1"})["state"] == "idle"
    sent = gw.post("/broadcast", {"message": "deploy at 5", "session_id": "ops"})
    assert sent["addressed"] == 2
    # the broadcast reached both HTTP agents' inboxes
    for agent in ("h1", "h2"):
        subjects = [m["subject"] for m in gw.get(f"/agent/{agent}/messages")["messages"]]
        assert "deploy at 5" in subjects


def test_assign_then_wait_claim_complete_fail_release(gw: Gateway, ops: Client) -> None:
    got = gw.post("/task/assign", {"session_id": "h1", "task_id": "a1", "create": True, "data": {"n": 1},
                                   "queue": True})
    assert got["agent"] == "h1" and "token" not in got
    work = gw.get("/agent/h1/wait?timeout_s=20")
    assert work["kind"] == "task" and work["task"]["id"] == "a1" and work["assigned"] is True
    assert work["task"]["data"] == {"n": 1}
    assert gw.post("/task/complete", {"session_id": "h1", "task_id": "a1", "result": {"ok": 1}})["status"] == "completed"
    assert ops.task("a1")["result"] == {"ok": 1}
    for t in ("c1", "c2"):
        ops.create_task(t, max_attempts=1)
    assert gw.post("/task/claim", {"session_id": "h1", "task_id": "c1"})["task"]["claimed"] is True
    assert ops.task("c1")["owner"] == "h1"
    assert gw.post("/task/release", {"session_id": "h1", "task_id": "c1"})["status"] == "available"
    got = gw.post("/task/claim", {"session_id": "h1"})
    assert got["claimed"] and got["task"]["id"] in ("c1", "c2")
    assert gw.post("/task/fail", {"session_id": "h1", "task_id": got["task"]["id"], "error": "no"})["status"] == "dead"
    other = ({"c1", "c2"} - {got["task"]["id"]}).pop()
    status, body = gw.request("POST", "/task/complete", {"session_id": "h2", "task_id": other})
    assert status == 409 and body["code"] == "not_owner"
    status, body = gw.request("POST", "/task/claim", {"session_id": "h1", "task_id": "nope"})
    assert status == 404 and body["code"] == "not_found"


def test_long_poll_wakes_on_a_new_task(gw: Gateway, ops: Client) -> None:
    got: dict[str, Any] = {}
    t = threading.Thread(target=lambda: got.update(gw.get("/agent/w1/wait?timeout_s=40&capability=py")))
    t.start()
    wait_for(lambda: (agent_row(ops, "w1") or {}).get("message") == "waiting for work", what="the wait begun")
    ops.create_task("p1", requires=["py"])
    t.join(60)
    assert got["kind"] == "task" and got["task"]["id"] == "p1" and got["task"]["claimed"]
    assert ops.task("p1")["owner"] == "w1"
    # a wait again before the task is done answers it again (a lost answer loses nothing)
    again = gw.get("/agent/w1/wait?timeout_s=0.2")
    assert again["kind"] == "task" and again["task"]["id"] == "p1" and again["repeated"] is True
    assert again["handle"] == got["handle"]
    gw.post("/task/complete", {"session_id": "w1", "task_id": "p1"})
    assert gw.get("/agent/w1/wait?timeout_s=0.2")["kind"] == "timeout"


def test_messages_and_paths(gw: Gateway, ops: Client) -> None:
    sent = gw.post("/message/send", {"session_id": "h1", "subject": "review", "body": {"pr": 3}, "to": "h2",
                                     "requires_ack": True})
    inbox = gw.get("/agent/h2/messages?peek=true")["messages"]
    assert [m["id"] for m in inbox] == [sent["id"]] and inbox[0]["from"] == "h1"
    assert gw.get("/agent/h2/messages")["messages"][0]["body"] == {"pr": 3}
    assert gw.get("/agent/h2/messages")["messages"] == []
    assert gw.post("/message/ack", {"session_id": "h2", "message_id": sent["id"]})["acked"] is True
    assert ops.message(sent["id"])["recipients"][0]["acked_at"] is not None
    assert gw.post("/paths/reserve", {"session_id": "h1", "paths": ["src/**"]})["reservations"][0]["mode"] == "exclusive"
    status, body = gw.request("POST", "/paths/reserve", {"session_id": "h2", "paths": ["src/a.py"]})
    assert status == 409 and body["code"] == "conflict" and "h1" in body["message"]
    assert gw.post("/paths/release", {"session_id": "h1"})["released"] == ["src/**"]
    status, body = gw.request("POST", "/message/send", {"session_id": "h1", "subject": "x"})
    assert status == 422 and body["field"] == "to"


BAD = [
    ("POST", "/task/claim", None, b"{not json", 400, None),
    ("POST", "/agent/idle", {"session_id": "h1", "bogus": 1}, None, 422, "bogus"),
    ("POST", "/agent/idle", {"session_id": ""}, None, 422, "session_id"),
    ("POST", "/agent/idle", {"session_id": "x" * 300}, None, 422, "session_id"),
    ("POST", "/agent/idle", {"session_id": "a\nb"}, None, 422, "session_id"),
    ("POST", "/agent/idle", {}, None, 422, "session_id"),
    ("POST", "/agent/idle", {"session_id": "h1", "status": "busy"}, None, 422, "status"),
    ("POST", "/agent/idle", {"session_id": "h1", "cost_spent": -1}, None, 422, "cost_spent"),
    ("POST", "/agent/idle", {"session_id": "h1", "tasks_completed": "many"}, None, 422, "tasks_completed"),
    ("POST", "/agent/busy", {"session_id": "h1"}, None, 422, "last_task"),
    ("POST", "/agent/help", {"session_id": "h1"}, None, 422, "reason"),
    ("POST", "/agent/sleeping", {"session_id": "h1"}, None, 422, "state"),
    ("POST", "/agent/idle", {"session_id": "h1", "capabilities": "python"}, None, 422, "capabilities"),
    ("POST", "/task/complete", {"session_id": "h1"}, None, 422, "task_id"),
    ("POST", "/task/claim", {"session_id": "h1", "ttl": 0}, None, 422, "ttl"),
    ("POST", "/broadcast", {"session_id": "h1"}, None, 422, "message"),
    ("POST", "/paths/reserve", {"session_id": "h1", "paths": ["../x"]}, None, 422, "paths"),
    ("POST", "/task/assign", {"session_id": "h1"}, None, 422, "task_id"),
    ("POST", "/message/ack", {"session_id": "h1", "message_id": "x" * 201}, None, 422, "message_id"),
    ("GET", "/agent/h1/wait?timeout_s=nan", None, None, 422, "timeout_s"),
    ("GET", "/agent/h1/wait?timeout_s=100000", None, None, 422, "timeout_s"),
    ("GET", "/agent/h1/messages?limit=0", None, None, 422, "limit"),
    ("GET", "/agent/h1/wait?timeout_s=0&handle=", None, None, 422, "handle"),
    ("GET", "/agent/h1/wait?timeout_s=0&handle=a%1Bb", None, None, 422, "handle"),
    ("GET", "/agent/h1/wait?timeout_s=0&handle=" + "x" * 201, None, None, 422, "handle"),
    ("GET", "/agent/h1/wait?timeout_s=0&handle=w0-1", None, None, 404, "handle"),
    ("POST", "/broadcast", None, b'{"message": "' + b"x" * (protocol.MAX_MESSAGE_BYTES + 10) + b'"}', 413, None),
    ("POST", "/message/send", {"session_id": "h1", "subject": "s", "to": "h2",
                               "body": "x" * (protocol.MAX_MESSAGE_DATA_BYTES + 10)}, None, 413, None),
]


def test_a_body_without_the_json_content_type_and_unknown_paths_answer_in_the_gateway_shape(gw: Gateway) -> None:
    """curl -d without -H content-type sends a form type: the answer said "field 'None'"; an
    unknown path or method answered {"detail": ...} (both found in the new-user trial)."""
    req = urllib.request.Request(gw.base + "/agent/idle", data=b'{"session_id": "f1"}', method="POST",
                                 headers={"content-type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    got = json.loads(info.value.read())
    assert info.value.code == 415 and got["field"] == "content-type" and "application/json" in got["message"], got
    status, got = gw.request("POST", "/agent/idle", [1, 2])
    assert status == 422 and "the body must be a JSON object" in got["message"] and "None" not in got["message"]
    for method, path, code in (("GET", "/nope", 404), ("DELETE", "/status", 405), ("GET", "/task/claim", 405)):
        status, got = gw.request(method, path)
        assert status == code and set(got) == {"code", "message"} and path in got["message"], (path, got)


def test_bad_input_is_4xx_naming_the_field(gw: Gateway) -> None:
    for method, path, body, raw, status, field in BAD:
        got_status, got = gw.request(method, path, body, raw=raw)
        assert got_status == status, (path, body, got_status, got)
        assert set(got) <= {"code", "message", "field"} and got["message"], got
        if field is not None:
            assert got.get("field") == field or field in got["message"], (path, body, got)
    assert "Traceback" not in gw.log()


def test_the_broker_away_is_503_never_a_hang(broker: BrokerProcess, tmp_path: Path) -> None:
    g = Gateway(broker, tmp_path, timeout=1.0)
    try:
        g.post("/agent/idle", {"session_id": "h1"})
        broker.stop()
        for method, path, body in (("GET", "/status", None), ("POST", "/agent/idle", {"session_id": "h1"}),
                                   ("POST", "/agent/idle", {"session_id": "new"}),
                                   ("GET", "/agent/h1/wait?timeout_s=5", None)):
            status, got = g.request(method, path, body, timeout=20)
            assert status == 503 and got["code"] == "unreachable", (path, status, got)
    finally:
        g.stop()


def test_an_http_agent_lives_while_it_calls_or_waits(broker: BrokerProcess, tmp_path: Path, ops: Client) -> None:
    g = Gateway(broker, tmp_path, "--ttl", "1")
    try:
        ops.create_task("held")
        g.post("/task/claim", {"session_id": "waiter", "task_id": "held"})
        # a wait three TTLs long renews the lease as it waits: the claim is still there after it
        assert g.get("/agent/waiter/wait?timeout_s=3&claim=false")["kind"] == "timeout"
        assert ops.task("held")["owner"] == "waiter"
        ops.create_task("dropped")
        g.post("/task/claim", {"session_id": "quiet", "task_id": "dropped"})
        # an agent that stops calling loses its claim with its lease
        wait_for(lambda: ops.task("dropped")["status"] == "available", timeout=15, what="the lapsed claim back")
    finally:
        g.stop()


def test_without_fastapi_the_command_says_what_to_install(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "fastapi"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no fastapi here', name='fastapi')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "shadow"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "zmesh", "gateway"], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 2
    assert "pip install 'zmesh[gateway]'" in done.stderr and "Traceback" not in done.stderr


def test_a_broken_import_of_our_own_is_internal_not_install_the_extra(tmp_path: Path) -> None:
    """An ImportError inside zmesh (a bug of ours) was reported as "needs the extra 'gateway'"."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "sitecustomize.py").write_text("import sys\nsys.modules['zmesh.adapters.schemas'] = None\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "zmesh", "gateway"], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("zmesh: internal: ") and "pip install" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_taken_port_is_exit_1_naming_listen(broker: BrokerProcess, gw: Gateway) -> None:
    done = subprocess.run([sys.executable, "-m", "zmesh", "--broker", broker.endpoint, "gateway", "--listen",
                           f"127.0.0.1:{gw.port}"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=60)
    assert done.returncode == 1 and "--listen" in done.stderr and "in use" in done.stderr.splitlines()[-1]


def test_the_readme_curl_lines_work_as_written(gw: Gateway, ops: Client) -> None:
    text = (ROOT / "README.md").read_text()
    start = text.index("## HTTP gateway\n")
    section = text[start:text.find("\n## ", start + 1)]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    lines = [x for x in block.group(1).splitlines() if x.startswith(("curl ", "zmesh task "))]
    assert len([x for x in lines if x.startswith("curl ")]) >= 4
    for line in lines:
        if line.startswith("zmesh "):  # the block's own setup, run as written against the test's broker
            words = shlex.split(line.split("  #")[0])
            done = subprocess.run([sys.executable, "-m", "zmesh", "--broker", ops.endpoint, *words[1:]],
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
            assert done.returncode == 0, (line, done.stderr)
            continue
        words = shlex.split(line)
        url = next(w for w in words if w.startswith("http://"))
        body = words[words.index("-d") + 1] if "-d" in words else None
        path = url.split("7780", 1)[1]
        status, got = gw.request("POST" if body is not None else "GET", path,
                                 raw=None if body is None else body.encode(), timeout=60)
        assert status == 200, (line, status, got)


# ---------------------------------------------------------------- bearer tokens
ALICE_TOKEN, OPS_TOKEN = "alice-token-0123456789", "ops-token-0123456789abcdef"


def test_tokens_name_the_agent_a_caller_may_act_as(broker: BrokerProcess, tmp_path: Path, ops: Client) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# who may call\n{ALICE_TOKEN} alice\n\n{OPS_TOKEN} *\n")
    tokens.chmod(0o600)
    g = Gateway(broker, tmp_path, "--tokens", str(tokens))
    try:
        ops.create_task("t1")
        # no token, a bad scheme, an unknown token: 401, and nothing happened
        for token in (None, "", "wrong-token-0123456789"):
            status, got = g.request("POST", "/task/claim", {"session_id": "alice", "task_id": "t1"}, token=token)
            assert (status, got["code"], got["field"]) == (401, "unauthorized", "Authorization"), got
        assert ops.task("t1")["status"] == "available" and agent_row(ops, "alice") is None
        # the schema stays open
        with urllib.request.urlopen(g.base + "/openapi.json", timeout=5) as resp:
            assert resp.status == 200
        # alice's token acts as alice only
        status, got = g.request("POST", "/task/claim", {"session_id": "alice", "task_id": "t1"}, token=ALICE_TOKEN)
        assert status == 200 and got["claimed"], got
        status, got = g.request("POST", "/task/complete", {"session_id": "bob", "task_id": "t1"}, token=ALICE_TOKEN)
        assert (status, got["code"]) == (403, "forbidden") and "agent 'bob'" in got["message"], got
        status, got = g.request("GET", "/agent/bob/messages", token=ALICE_TOKEN)
        assert status == 403, got
        status, got = g.request("POST", "/task/assign", {"session_id": "alice", "task_id": "t2", "create": True},
                                token=ALICE_TOKEN)
        assert status == 403 and "gateway's own calls" in got["message"], got
        assert g.request("GET", "/status", token=ALICE_TOKEN)[0] == 200  # reading is any token's
        # the * token acts as anyone and makes the gateway's own calls
        status, got = g.request("POST", "/task/assign", {"session_id": "alice", "task_id": "t2", "create": True},
                                token=OPS_TOKEN)
        assert status == 200, got
        assert ops.task("t2")["owner"] == "alice"
        assert g.request("POST", "/task/complete", {"session_id": "alice", "task_id": "t1"}, token=OPS_TOKEN)[0] == 200
    finally:
        g.stop()


@pytest.mark.parametrize("content, mode, match", [
    (f"{ALICE_TOKEN} alice\n", 0o644, "can be read by others"),
    ("short alice\n", 0o600, "at least 16 printable characters"),
    (f"{ALICE_TOKEN}\n", 0o600, "want 'TOKEN AGENT'"),
    (f"{ALICE_TOKEN} alice\n{ALICE_TOKEN} bob\n", 0o600, "line 2: this token is given twice"),
    ("# nothing\n", 0o600, "holds no token"),
])
def test_a_bad_tokens_file_is_refused_at_start(tmp_path: Path, content: str, mode: int, match: str) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(content)
    tokens.chmod(mode)
    done = subprocess.run([sys.executable, "-m", "zmesh", "gateway", "--listen", f"127.0.0.1:{free_port()}",
                           "--tokens", str(tokens)], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    assert match in done.stderr and "--tokens" in done.stderr and "Traceback" not in done.stderr


def test_a_non_loopback_listen_needs_tokens_or_no_auth(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "zmesh", "gateway", "--listen", f"0.0.0.0:{free_port()}"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "--tokens" in done.stderr and "--no-auth" in done.stderr, done.stderr


def test_a_long_poll_whose_answer_is_lost_is_answered_again(gw: Gateway, ops: Client) -> None:
    """The HTTP client's connection dies with the answer in flight (the wait claimed as it
    answered): the next wait answers the same task again, and no second task is claimed."""
    import socket

    for task in ("l1", "l2"):
        ops.create_task(task)
    conn = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    conn.sendall(b"GET /agent/lost/wait?timeout_s=20 HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for(lambda: any(t["owner"] == "lost" for t in ops.tasks(status="claimed")), what="the wait's claim")
    conn.close()  # whatever was sent is lost with the connection
    held = [t["id"] for t in ops.tasks(status="claimed") if t["owner"] == "lost"]
    again = gw.get("/agent/lost/wait?timeout_s=20")
    assert again["kind"] == "task" and [again["task"]["id"]] == held and again["repeated"] is True
    assert [t["id"] for t in ops.tasks(status="claimed") if t["owner"] == "lost"] == held
