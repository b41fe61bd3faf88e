"""``wait_for_work`` survives a lost answer: driven by the official MCP SDK client over stdio,
through a relay (tests/lossy_stdio.py) that drops the answer of the first call on purpose, as a
broken response stream of the stateless revision (2026-07-28) does. The client gives up on
the call and re-issues it; it gets the same task with the same handle, and no second claim
exists. Both the handshake era (ClientSession.initialize) and the stateless era
(``mcp.Client(mode="2026-07-28")``) are driven. A server that starts on a lease whose earlier
process died holding a claim hands that claim out again the same way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import anyio
import pytest
from mcp import Client as MCPClient
from mcp import StdioServerParameters
from mcp.client.session import ClientSession
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError

from zmesh import Client
from zmesh.testing import BrokerProcess

from .conftest import until
from .test_mcp import _initialize, _read_until, _rpc

pytestmark = pytest.mark.timeout(120)
RELAY = Path(__file__).resolve().parent / "lossy_stdio.py"


def _params(broker: BrokerProcess, agent: str, pid_file: Path, drop: int) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, env=dict(os.environ), args=[
        str(RELAY), "--drop", "wait_for_work", "--times", str(drop), "--pid-file", str(pid_file), "--",
        sys.executable, "-m", "zmesh", "--broker", broker.endpoint, "mcp", "--agent", agent, "-v"])


@asynccontextmanager
async def lossy_session(broker: BrokerProcess, tmp_path: Path, era: str, agent: str = "m1",
                        drop: int = 1) -> AsyncIterator[Any]:
    """An SDK client of ``zmesh mcp`` whose first ``drop`` wait_for_work answers are lost."""
    pid_file = tmp_path / f"server-{agent}.pid"
    params = _params(broker, agent, pid_file, drop)
    try:
        if era == "handshake":
            async with stdio_client(params) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    yield session
        else:
            async with MCPClient(params, mode="2026-07-28") as client:
                yield client
    finally:
        _stop(pid_file)


def _stop(pid_file: Path) -> None:
    """The server behind the relay, stopped by its PID if it outlived the relay."""
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def structured(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content  # type: ignore[no-any-return]


def claimed_by(boss: Client, agent: str) -> list[str]:
    return sorted(t["id"] for t in boss.tasks(status="claimed") if t["owner"] == agent)


@pytest.mark.parametrize("era", ["handshake", "stateless"])
def test_a_lost_answer_is_answered_again_and_no_second_task_is_claimed(
        broker: BrokerProcess, tmp_path: Path, era: str) -> None:
    boss = Client(broker.endpoint)
    for task in ("t1", "t2"):
        boss.create_task(task)

    async def run() -> None:
        async with lossy_session(broker, tmp_path, era) as s:
            # the wait claims at once; its answer never reaches the client, which gives up
            with pytest.raises(MCPError):
                await s.call_tool("wait_for_work", {"timeout_s": 20}, read_timeout_seconds=3)
            first = claimed_by(boss, "m1")
            assert len(first) == 1, first  # the lost answer had claimed one task
            # the client re-issues the same call
            again = structured(await s.call_tool("wait_for_work", {"timeout_s": 20}))
            assert again["kind"] == "task" and [again["task"]["id"]] == first
            assert again["repeated"] is True and again["task"]["claimed"] is True and again["handle"]
            assert claimed_by(boss, "m1") == first  # no second claim exists
            assert boss.task(({"t1", "t2"} - set(first)).pop())["status"] == "available"
            assert boss.stats("m1")["claims"] == first
            # asked by its handle, the same task again
            named = structured(await s.call_tool("wait_for_work", {"timeout_s": 1, "handle": again["handle"]}))
            assert named["task"]["id"] == first[0] and named["handle"] == again["handle"]
            # once it is done, the next wait hands out the other task under a new handle
            done = structured(await s.call_tool("complete_task", {"task": first[0]}))
            assert done["status"] == "completed"
            nxt = structured(await s.call_tool("wait_for_work", {"timeout_s": 20}))
            assert nxt["kind"] == "task" and nxt["task"]["id"] != first[0]
            assert nxt.get("repeated") is None and nxt["handle"] != again["handle"]
            # a bad handle is refused naming it, and claims nothing
            for bad in ("", "a\x1bb", "x" * 201):
                res = await s.call_tool("wait_for_work", {"timeout_s": 1, "handle": bad})
                assert res.is_error and "handle" in res.content[0].text, bad  # type: ignore[union-attr]
            # a settled handle is refused, saying why, and claims nothing
            stale = await s.call_tool("wait_for_work", {"timeout_s": 1, "handle": again["handle"]})
            assert stale.is_error and "no task this agent still holds" in stale.content[0].text  # type: ignore[union-attr]
            assert claimed_by(boss, "m1") == [nxt["task"]["id"]]
    anyio.run(run)
    boss.close()


def test_a_grant_whose_claim_went_elsewhere_is_not_answered_again(broker: BrokerProcess, tmp_path: Path) -> None:
    """A grant is checked at the broker before it is answered again: a claim that lapsed or was
    taken by an admin is settled, and the wait goes on to new work."""
    boss = Client(broker.endpoint)
    boss.create_task("t1")

    async def run() -> None:
        async with lossy_session(broker, tmp_path, "handshake", drop=1) as s:
            with pytest.raises(MCPError):
                await s.call_tool("wait_for_work", {"timeout_s": 20, "ttl": 1}, read_timeout_seconds=3)
            # its own TTL (1 s) runs out: the task is back in the pool, and another agent takes it
            await until(lambda: boss.task("t1")["status"] == "available", "the claim lapsed")
            other = Client(broker.endpoint, agent="other")
            other.claim("t1")
            got = structured(await s.call_tool("wait_for_work", {"timeout_s": 0.5}))
            assert got["kind"] == "timeout", got  # not t1 again: it is other's now
            other.close()
    anyio.run(run)
    boss.close()


# ---------------------------------------------------------------- an earlier process of the agent
def _server(broker: BrokerProcess, procs: Any, agent: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "zmesh", "--broker", broker.endpoint, "mcp", "--agent", agent],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    procs.procs.append(proc)
    _initialize(proc, [])
    return proc


def _wait(proc: subprocess.Popen, rid: int) -> dict[str, Any]:
    _rpc(proc, {"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                "params": {"name": "wait_for_work", "arguments": {"timeout_s": 20}}})
    return _read_until(proc, [], lambda m: m.get("id") == rid)["result"]["structuredContent"]  # type: ignore[no-any-return]


def test_a_new_process_of_the_agent_hands_out_the_claim_its_dead_predecessor_held(
        broker: BrokerProcess, procs: Any) -> None:
    boss = Client(broker.endpoint)
    for task in ("t1", "t2"):
        boss.create_task(task)
    first = _server(broker, procs, "cc-1")
    got = _wait(first, 2)
    assert got["kind"] == "task"
    held = got["task"]["id"]
    first.kill()  # no unregister: the claim stays on the lease, which is still alive
    first.wait(10)
    second = _server(broker, procs, "cc-1")
    again = _wait(second, 2)
    assert again["kind"] == "task" and again["task"]["id"] == held and again["repeated"] is True
    assert claimed_by(boss, "cc-1") == [held]  # no second claim
    second.stdin.close()  # type: ignore[union-attr]
    second.wait(30)
    assert boss.task(held)["status"] == "available"  # unregistered on the way out: it went back
    boss.close()
