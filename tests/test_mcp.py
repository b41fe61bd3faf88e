"""``zmesh mcp`` driven by the official MCP SDK client over stdio (the server a subprocess),
against a real broker: the tools and their schemas, wake-ups, claims, cancellation, errors,
progress, the channel, and stdout carrying protocol only."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import anyio
import orjson
import pytest
from mcp import StdioServerParameters
from mcp.client.session import ClientSession
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError

from zmesh import Client
from zmesh import protocol
from zmesh.adapters.session import AgentSession
from zmesh.adapters.mcp import DEFAULT_WAIT_MAX_S, TOOLS, default_agent
from zmesh.testing import BrokerProcess

from .conftest import until, wait_for

pytestmark = pytest.mark.timeout(120)


def _args(broker: BrokerProcess, agent: str, extra: tuple[str, ...]) -> list[str]:
    return ["-m", "zmesh", "--broker", broker.endpoint, "mcp", "--agent", agent, *extra]


@asynccontextmanager
async def mcp_session(broker: BrokerProcess, agent: str = "m1", *extra: str) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=sys.executable, args=_args(broker, agent, extra), env=dict(os.environ))
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


async def call(session: ClientSession, tool: str, **args: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, args)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def error_text(session: ClientSession, tool: str, **args: Any) -> str:
    result = await session.call_tool(tool, args)
    assert result.is_error, result.structured_content
    return result.content[0].text  # type: ignore[union-attr]


def agent_row(client: Client, agent: str) -> dict[str, Any] | None:
    return next((a for a in client.agents() if a["id"] == agent), None)


# ---------------------------------------------------------------- the tool list
def test_tools_listed_with_schemas_from_the_op_table(broker: BrokerProcess) -> None:
    async def run() -> None:
        async with mcp_session(broker) as s:
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert tuple(tools) == TOOLS
            for tool in tools.values():
                assert tool.description and tool.output_schema, tool.name
            # arguments that are protocol fields carry the field's own rules
            task = tools["complete_task"].input_schema["properties"]["task"]
            assert task["maxLength"] == protocol.MAX_ID_BYTES and task["description"] == "task id"
            assert tools["complete_task"].input_schema["required"] == ["task"]
            state = tools["set_status"].input_schema["properties"]["state"]
            assert state["enum"] == list(protocol.OPS["report"].by_name["state"].choices)
            ttl = tools["claim_next"].input_schema["properties"]["ttl"]["anyOf"][0]
            assert (ttl["minimum"], ttl["maximum"]) == (protocol.MIN_TTL_S, protocol.MAX_TTL_S)
            prio = tools["send_message"].input_schema["properties"]["priority"]
            assert prio["enum"] == list(protocol.PRIORITIES)
            paths = tools["reserve_paths"].input_schema["properties"]["paths"]
            assert paths["maxItems"] == protocol.MAX_LIST_ITEMS
            wait = tools["wait_for_work"].input_schema["properties"]["timeout_s"]
            assert wait["maximum"] == DEFAULT_WAIT_MAX_S == wait["default"]
            kinds = tools["wait_for_work"].output_schema["properties"]["kind"]
            assert kinds["enum"] == ["task", "message", "timeout"]
    anyio.run(run)


def test_wait_max_option_bounds_the_waits(broker: BrokerProcess) -> None:
    async def run() -> None:
        async with mcp_session(broker, "m1", "--wait-max", "300") as s:
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert tools["wait_for_work"].input_schema["properties"]["timeout_s"]["maximum"] == 300
            assert tools["reserve_paths"].input_schema["properties"]["wait_s"]["maximum"] == 300
            text = await error_text(s, "wait_for_work", timeout_s=301)
            assert "timeout_s" in text
    anyio.run(run)


# ---------------------------------------------------------------- waiting for work
def test_task_created_from_the_cli_wakes_wait_for_work(broker: BrokerProcess) -> None:
    observer = Client(broker.endpoint)

    async def run() -> None:
        async with mcp_session(broker, "m1", "--capability", "py") as s:
            got: dict[str, Any] = {}

            async def waiter() -> None:
                got.update(await call(s, "wait_for_work", timeout_s=DEFAULT_WAIT_MAX_S))

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                # the wait has begun when the agent reports itself idle and waiting
                await until(lambda: (agent_row(observer, "m1") or {}).get("message") == "waiting for work",
                            "the agent waiting")
                done = subprocess.run([sys.executable, "-m", "zmesh", "--broker", broker.endpoint, "task", "add",
                                       "t1", "--requires", "py", "--data", '{"goal": "x"}'],
                                      capture_output=True, text=True, timeout=30)
                assert done.returncode == 0, done.stderr
            assert got["kind"] == "task" and got["task"]["id"] == "t1" and got["task"]["claimed"]
            assert got["task"]["data"] == {"goal": "x"} and got["assigned"] is False
            record = observer.task("t1")
            assert record["status"] == "claimed" and record["owner"] == "m1"
            assert agent_row(observer, "m1")["state"] == "busy"  # type: ignore[index]
            assert (await call(s, "whoami"))["holding"] == ["t1"]
    anyio.run(run)
    observer.close()


def test_wait_for_work_answers_messages_assignments_and_timeouts(broker: BrokerProcess) -> None:
    boss = Client(broker.endpoint)

    async def run() -> None:
        async with mcp_session(broker) as s:
            assert (await call(s, "wait_for_work", timeout_s=0.2))["kind"] == "timeout"
            boss.send("review please", {"pr": 7}, to="m1", sender=None)
            got = await call(s, "wait_for_work", timeout_s=DEFAULT_WAIT_MAX_S)
            assert got["kind"] == "message" and got["message"]["subject"] == "review please"
            assert got["message"]["body"] == {"pr": 7}
            # still unread: read_messages shows it, and marks it read
            read = await call(s, "read_messages")
            assert [m["id"] for m in read["messages"]] == [got["message"]["id"]] and read["more"] is False
            assert (await call(s, "read_messages"))["messages"] == []
            boss.create_task("a1")
            boss.assign("m1", "a1")
            got = await call(s, "wait_for_work", timeout_s=DEFAULT_WAIT_MAX_S)
            assert got["kind"] == "task" and got["task"]["id"] == "a1" and got["assigned"] is True
            assert (await call(s, "complete_task", task="a1"))["status"] == "completed"
            # claim=false: the task is named, not claimed
            boss.create_task("free")
            got = await call(s, "wait_for_work", timeout_s=DEFAULT_WAIT_MAX_S, claim=False)
            assert got["task"]["id"] == "free" and got["task"]["claimed"] is False
            assert boss.task("free")["status"] == "available"
    anyio.run(run)
    boss.close()


def test_wait_for_work_sends_progress(broker: BrokerProcess) -> None:
    async def run() -> None:
        async with mcp_session(broker, "m1", "--progress-every", "0.2") as s:
            seen: list[tuple[float, float | None]] = []

            async def progress(done: float, total: float | None, message: str | None) -> None:
                seen.append((done, total))
            result = await s.call_tool("wait_for_work", {"timeout_s": 1.0}, progress_callback=progress)
            assert result.structured_content["kind"] == "timeout"  # type: ignore[index]
            assert seen and all(total == 1.0 and 0 < done <= 1.0 for done, total in seen)
            assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    anyio.run(run)


def test_cancelled_wait_for_work_leaves_no_claim_and_no_waiter(broker: BrokerProcess) -> None:
    boss = Client(broker.endpoint)

    async def run() -> None:
        async with mcp_session(broker) as s:
            with pytest.raises(MCPError):  # the client gives up: it sends notifications/cancelled
                await s.call_tool("wait_for_work", {"timeout_s": DEFAULT_WAIT_MAX_S}, read_timeout_seconds=0.5)
            # the server reads its input in order: the cancellation is applied before this answer
            assert (await call(s, "whoami"))["holding"] == []
            boss.create_task("t1")
            boss.send("ping", to="m1")
            # a waiter still running would take the push (and claim t1): it stays queued instead
            me: dict[str, Any] = {}
            deadline = time.monotonic() + 15
            while me.get("unread_pushed") != 1 and time.monotonic() < deadline:
                me = await call(s, "whoami")
            assert me["unread_pushed"] == 1 and me["holding"] == []
            assert boss.task("t1")["status"] == "available"
    anyio.run(run)
    boss.close()


def test_session_releases_a_claim_taken_as_its_wait_is_cancelled(broker: BrokerProcess) -> None:
    """The broker grants the claim while the caller gives up (as the MCP SDK cancels a tool's
    scope): the grant is seen, and the claim goes back. Deterministic: the test holds the
    broker call open until the cancellation has been made."""
    boss = Client(broker.endpoint)
    boss.create_task("t1")

    async def run() -> None:
        session = AgentSession(broker.endpoint, "s1")
        granted, hold = anyio.Event(), anyio.Event()
        real = session.client.claim_next

        async def claim_then_hold(**kw: Any) -> Any:
            claim = await real(**kw)
            granted.set()
            await hold.wait()  # the answer is in; the caller gives up before it is returned
            return claim
        session.client.claim_next = claim_then_hold  # type: ignore[method-assign]
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(session.wait_for_work, 30.0)
                await granted.wait()
                assert boss.task("t1")["owner"] == "s1"
                tg.cancel_scope.cancel()
                hold.set()
            assert boss.task("t1")["status"] == "available"
            assert session.held == {}
        finally:
            await session.close()
    anyio.run(run)
    boss.close()


# ---------------------------------------------------------------- tasks through tools
def test_claim_complete_fail_release_change_the_broker(broker: BrokerProcess) -> None:
    boss = Client(broker.endpoint)
    for t in ("t1", "t2", "t3"):
        boss.create_task(t, max_attempts=1 if t == "t2" else 3)

    async def run() -> None:
        async with mcp_session(broker) as s:
            got = await call(s, "claim_task", task="t1")
            assert got["claimed"] and "token" not in got["task"]
            assert boss.task("t1")["owner"] == "m1"
            assert (await call(s, "release_task", task="t1"))["status"] == "available"
            assert boss.task("t1")["status"] == "available"
            got = await call(s, "claim_task", task="t2")
            assert (await call(s, "fail_task", task="t2", error="tests broke"))["status"] == "dead"
            assert boss.task("t2")["status"] == "dead"
            got = await call(s, "claim_next")
            assert got["claimed"] and got["task"]["id"] in ("t1", "t3")
            first = got["task"]["id"]
            assert (await call(s, "complete_task", task=first, result={"ok": True}))["status"] == "completed"
            record = boss.task(first)
            assert record["status"] == "completed" and record["result"] == {"ok": True}
            other = ({"t1", "t3"} - {first}).pop()
            assert (await call(s, "claim_next"))["task"]["id"] == other
            assert (await call(s, "complete_task", task=other))["status"] == "completed"
            assert await call(s, "claim_next") == {"claimed": False, "task": None}
            assert (await call(s, "whoami"))["holding"] == []
    anyio.run(run)
    boss.close()


def test_tool_errors_say_what_to_do_next(broker: BrokerProcess) -> None:
    boss = Client(broker.endpoint, agent="holder")
    boss.create_task("t1")
    boss.claim("t1")
    boss.reserve(["src/**"])

    async def run() -> None:
        async with mcp_session(broker) as s:
            text = await error_text(s, "claim_task", task="t1")
            assert "conflict" in text and "holder" in text and "claim_next" in text
            text = await error_text(s, "complete_task", task="t1")
            assert "not_owner" in text and "claim_next" in text
            text = await error_text(s, "reserve_paths", paths=["src/zmesh/*.py"])
            assert "holder" in text and "src/**" in text and "wait_s" in text
            text = await error_text(s, "claim_task", task="no-such")
            assert "not_found" in text
            text = await error_text(s, "send_message", subject="hi")
            assert "exactly one address" in text
            text = await error_text(s, "reserve_paths", paths=["../etc/passwd"])
            assert "paths" in text and ".." in text  # the glob rule, named by the argument
            text = await error_text(s, "claim_task", task="a\x1bb")
            assert "task" in text and "control characters" in text
            # a refusal about what this agent holds itself says so (it said "someone else holds it")
            boss.create_task("mine")
            await call(s, "claim_task", task="mine")
            text = await error_text(s, "set_status", state="idle")
            assert "conflict" in text and "you hold these tasks yourself" in text and "someone else" not in text
    anyio.run(run)
    boss.close()


def test_paths_and_messages_through_tools(broker: BrokerProcess) -> None:
    peer = Client(broker.endpoint, agent="peer")
    peer.connect()

    async def run() -> None:
        async with mcp_session(broker) as s:
            got = await call(s, "reserve_paths", paths=["docs/**"], ttl=60)
            assert got["reservations"][0]["pattern"] == "docs/**"
            assert [r["agent"] for r in peer.reservations()] == ["m1"]
            assert (await call(s, "whoami"))["reservations"][0]["pattern"] == "docs/**"
            assert (await call(s, "release_paths"))["released"] == ["docs/**"]
            assert peer.reservations() == []
            sent = await call(s, "send_message", subject="done", body={"n": 1}, to="peer", requires_ack=True)
            assert sent["addressed"] == 1
            msg = peer.receive(timeout=10)
            assert msg is not None and msg.sender == "m1" and msg.body == {"n": 1}
            peer.send("please ack", to="m1", requires_ack=True)
            read = await call(s, "read_messages")
            mid = read["messages"][0]["id"]
            assert read["messages"][0]["requires_ack"] is True
            assert (await call(s, "ack_message", message=mid, note="seen"))["acked"] is True
            assert peer.message(mid)["recipients"][0]["acked_at"] is not None
            agents = {a["id"]: a for a in (await call(s, "list_agents"))["agents"]}
            assert set(agents) == {"m1", "peer"} and agents["peer"]["liveness"] == "alive"
            assert (await call(s, "set_status", state="blocked", reason="waiting on review"))["state"] == "blocked"
            assert agent_row(peer, "m1")["state"] == "blocked"  # type: ignore[index]
    anyio.run(run)
    peer.close()


# ---------------------------------------------------------------- the process
def _rpc(proc: subprocess.Popen, msg: dict[str, Any]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(orjson.dumps(msg) + b"\n")
    proc.stdin.flush()


def _read_until(proc: subprocess.Popen, lines: list[dict[str, Any]], pred: Any) -> dict[str, Any]:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        assert line, "the server closed stdout"
        msg = orjson.loads(line)  # every stdout line is one JSON-RPC message
        assert msg.get("jsonrpc") == "2.0", msg
        lines.append(msg)
        if pred(msg):
            return msg


def _start_raw(broker: BrokerProcess, procs: Any, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, *_args(broker, "raw1", ("-v", *extra))], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    procs.procs.append(proc)
    return proc


def _initialize(proc: subprocess.Popen, lines: list[dict[str, Any]]) -> dict[str, Any]:
    _rpc(proc, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
    init = _read_until(proc, lines, lambda m: m.get("id") == 1)
    _rpc(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    return init


def test_stdout_is_protocol_only_and_closing_stdin_ends_the_process(broker: BrokerProcess, procs: Any) -> None:
    observer = Client(broker.endpoint)
    proc = _start_raw(broker, procs)
    lines: list[dict[str, Any]] = []
    assert _initialize(proc, lines)["result"]["serverInfo"]["name"] == "zmesh"
    _rpc(proc, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}})
    who = _read_until(proc, lines, lambda m: m.get("id") == 2)
    assert who["result"]["structuredContent"]["agent"] == "raw1"
    assert agent_row(observer, "raw1") is not None
    assert proc.stdin is not None
    proc.stdin.close()
    closed = time.monotonic()
    proc.wait(30)
    took = time.monotonic() - closed
    assert proc.stdout is not None and proc.stderr is not None
    rest, err = proc.stdout.read(), proc.stderr.read()
    for line in rest.splitlines():
        assert orjson.loads(line)["jsonrpc"] == "2.0"
    assert proc.returncode == 0, err.decode(errors="replace")
    assert took < 5.0, f"exit took {took:.2f} s after stdin closed"  # the contract is 2 s; generous on CI
    assert b"INFO" in err and b"registered" in err  # the logs went to stderr
    assert agent_row(observer, "raw1") is None  # unregistered on the way out
    observer.close()


def test_channel_pushes_urgent_work_into_an_idle_session(broker: BrokerProcess, procs: Any) -> None:
    boss = Client(broker.endpoint)
    proc = _start_raw(broker, procs, "--channel")
    lines: list[dict[str, Any]] = []
    init = _initialize(proc, lines)
    assert init["result"]["capabilities"]["experimental"] == {"claude/channel": {}}
    wait_for(lambda: agent_row(boss, "raw1"), what="the agent registered")
    boss.send("low news", to="raw1", priority="low")
    boss.send("prod is down", {"where": "api"}, to="raw1", priority="critical")
    note = _read_until(proc, lines, lambda m: m.get("method") == "notifications/claude/channel")
    assert "prod is down" in note["params"]["content"]
    assert note["params"]["meta"]["kind"] == "message" and note["params"]["meta"]["priority"] == "critical"
    boss.create_task("a1")
    boss.assign("raw1", "a1")
    note = _read_until(proc, lines, lambda m: m.get("method") == "notifications/claude/channel")
    assert note["params"]["meta"]["kind"] == "task" and note["params"]["meta"]["task"] == "a1"
    assert "complete_task" in note["params"]["content"]
    # what the channel delivered is not answered again by a wait; the low message is
    _rpc(proc, {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                "params": {"name": "wait_for_work", "arguments": {"timeout_s": 5, "claim": False}}})
    got = _read_until(proc, lines, lambda m: m.get("id") == 3)["result"]["structuredContent"]
    assert got["kind"] == "message" and got["message"]["subject"] == "low news"
    assert not [m for m in lines if m.get("method") == "notifications/claude/channel"
                and "low news" in m["params"]["content"]]
    proc.stdin.close()  # type: ignore[union-attr]
    proc.wait(30)
    boss.close()


def test_no_channel_without_the_flag(broker: BrokerProcess, procs: Any) -> None:
    proc = _start_raw(broker, procs)
    lines: list[dict[str, Any]] = []
    init = _initialize(proc, lines)
    assert "claude/channel" not in (init["result"]["capabilities"].get("experimental") or {})
    proc.stdin.close()  # type: ignore[union-attr]
    proc.wait(30)


def test_without_the_sdk_the_command_says_what_to_install(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "mcp"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no SDK here', name='mcp')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "shadow"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "zmesh", "mcp", "--agent", "x"], capture_output=True, text=True,
                          env=env, stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 2
    assert "pip install 'zmesh[mcp]'" in done.stderr and "Traceback" not in done.stderr


def test_default_agent_is_env_else_host_and_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_agent({"ZMESH_AGENT": "me"}) == "me"
    monkeypatch.chdir(tmp_path)
    name = default_agent({})
    assert name.endswith(":" + str(tmp_path))
    deep = tmp_path / ("d" * 120) / ("e" * 120)
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    name = default_agent({})
    assert len(name.encode()) <= protocol.MAX_ID_BYTES and "~" in name
    with pytest.raises(Exception, match="ZMESH_AGENT"):
        default_agent({"ZMESH_AGENT": "bad\x00name"})


def test_docs_mcp_md_is_generated_from_the_server() -> None:
    from zmesh.adapters.mcp_doc import render_markdown

    assert (Path(__file__).resolve().parent.parent / "docs" / "MCP.md").read_text() == render_markdown(), \
        "run: python docs/gen_mcp.py"
