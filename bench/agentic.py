"""The agent-native workloads: path reservations and waking an MCP agent, zmesh beside MCP
Agent Mail on the same workload (PEERS.md, "The agent-native peer").

- reserve: one agent reserves one exclusive path and releases it, in turn. The reserve call
  is timed.
- race: 8 agents in separate processes reserve the same exclusive path, one path per round.
  A correct reservation grants exactly one of them each round.
- wake: from a task created (or a message sent) to ``wait_for_work`` returning, through the
  real ``zmesh mcp`` process driven by the MCP SDK client. Agent Mail has no blocking wait:
  its agents poll ``fetch_inbox``, here every 100 ms, and the time measured is from the
  message sent to the poll that sees it.

Agent Mail runs in its own virtualenv (it pins an MCP SDK 1.x): bench/setup_peers.sh makes
bench/.venv-agentmail, or BENCH_AGENTMAIL_PYTHON names a Python that has it. Without
it, its rows are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from . import hist

HERE = Path(__file__).resolve().parent
AGENTMAIL = "mcp-agent-mail"
#: Agent Mail's agents find messages by polling; this is the period used
POLL_S = 0.1


# ---------------------------------------------------------------- pool jobs (worker processes)
def reserve_job(inbox: Any, endpoint: str, agent: str, n: int) -> Iterator[Any]:
    from zmesh import Client

    c = Client(endpoint, agent=agent)
    c.connect()
    for i in range(20):  # warm up
        c.reserve([f"warm/{agent}/{i}.py"])
        c.release_paths()
    yield None
    h = hist.new()
    for i in range(n):
        s = time.perf_counter_ns()
        c.reserve([f"src/{agent}/f{i}.py"])
        hist.record_ns(h, time.perf_counter_ns() - s)
        c.release_paths()
    c.close()
    yield {"hist": hist.encode(h)}


def race_job(inbox: Any, endpoint: str, agent: str, rounds: int) -> Iterator[Any]:
    from zmesh import Client
    from zmesh.errors import Conflict

    c = Client(endpoint, agent=agent)
    c.connect()
    yield None
    h, won = hist.new(), []
    for r in range(rounds):
        s = time.perf_counter_ns()
        try:
            c.reserve([f"race/r{r}.py"])
            won.append(r)
        except Conflict:
            pass
        hist.record_ns(h, time.perf_counter_ns() - s)
    # keep what it holds: a racer still in an earlier round must find every grant in place
    # (unregistering would release them, and a late racer would be granted a freed path)
    c.close(unregister=False)
    yield {"hist": hist.encode(h), "won": won}


# ---------------------------------------------------------------- zmesh
def zmesh_reserve(pool: Any, endpoint: str, n: int) -> dict[str, Any]:
    got = pool.run([("reserve", (endpoint, "rsv-1", n))])[0]
    return {"latency_us": hist.summary(hist.merge([got["hist"]])), "ops": n}


def zmesh_race(pool: Any, endpoint: str, rounds: int, procs: int = 8) -> dict[str, Any]:
    got = pool.run([("race", (endpoint, f"racer-{i}", rounds)) for i in range(procs)])
    grants = [0] * rounds
    for g in got:
        for r in g["won"]:
            grants[r] += 1
    return _race_summary(grants, hist.summary(hist.merge([g["hist"] for g in got])), procs)


def _race_summary(grants: list[int], latency: dict[str, Any] | None, procs: int) -> dict[str, Any]:
    spread: dict[str, int] = {}
    for g in grants:
        spread[str(g)] = spread.get(str(g), 0) + 1
    return {"rounds": len(grants), "procs": procs, "exactly_one": sum(1 for g in grants if g == 1),
            "grants": dict(sorted(spread.items(), key=lambda kv: int(kv[0]))), "latency_us": latency}


def zmesh_wake(endpoint: str, n: int) -> dict[str, Any]:
    """Task created -> wait_for_work returns, and message sent -> wait_for_work returns,
    through a real ``zmesh mcp`` process and the MCP SDK client."""
    import anyio
    from mcp import StdioServerParameters
    from mcp.client.session import ClientSession
    from mcp.client.stdio import stdio_client

    from zmesh import Client
    from zmesh.adapters.defaults import MCP_WAIT_MAX_S

    ops = Client(endpoint)
    lat: dict[str, Any] = {"task": hist.new(), "message": hist.new()}

    async def run() -> None:
        params = StdioServerParameters(command=sys.executable, args=[
            "-m", "zmesh", "--broker", endpoint, "mcp", "--agent", "waker"], env=dict(os.environ))
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as s:
                await s.initialize()
                for i in range(n + 10):  # the first 10 warm up
                    for kind in ("task", "message"):
                        got: dict[str, Any] = {}

                        async def wait() -> None:
                            res = await s.call_tool("wait_for_work", {"timeout_s": MCP_WAIT_MAX_S})
                            got["at"] = time.perf_counter_ns()
                            assert not res.is_error, res.content
                            got["res"] = res.structured_content

                        async with anyio.create_task_group() as tg:
                            tg.start_soon(wait)
                            await anyio.sleep(0.02)  # let the wait begin (a task already there is found at once)
                            t0 = time.perf_counter_ns()
                            await anyio.to_thread.run_sync(
                                lambda: ops.create_task(f"wake-{i}") if kind == "task"
                                else ops.send(f"wake {i}", to="waker"))
                        assert got["res"]["kind"] == kind, got["res"]
                        if i >= 10:
                            hist.record_ns(lat[kind], got["at"] - t0)
                        if kind == "task":
                            await s.call_tool("complete_task", {"task": f"wake-{i}"})
                        else:
                            await s.call_tool("read_messages", {})
    try:
        anyio.run(run)
    finally:
        ops.close()
    return {kind: {"latency_us": hist.summary(h), "n": n} for kind, h in lat.items()}


# ---------------------------------------------------------------- MCP Agent Mail
def agentmail_python() -> str | None:
    """The Python of a virtualenv with mcp-agent-mail, or None."""
    candidates = [os.environ.get("BENCH_AGENTMAIL_PYTHON"), str(HERE / ".venv-agentmail" / "bin" / "python")]
    for py in candidates:
        if py and Path(py).exists():
            ok = subprocess.run([py, "-c", "import mcp_agent_mail, fastmcp"], capture_output=True, timeout=120)
            if ok.returncode == 0:
                return py
    return None


def _summary_us(values: list[float]) -> dict[str, Any]:
    h = hist.new()
    for v in values:
        hist.record_ns(h, int(v * 1000))
    return hist.summary(h)


def agentmail(work: Path, n_reserve: int, n_race: int, n_wake: int) -> dict[str, Any]:
    """Agent Mail's rows, or raises RuntimeError with the reason it cannot run here."""
    py = agentmail_python()
    if py is None:
        raise RuntimeError("mcp-agent-mail is not installed (bench/setup_peers.sh installs it into "
                           "bench/.venv-agentmail; it needs Python >= 3.11)")
    done = subprocess.run([py, str(HERE / "agentmail_driver.py"), str(work), str(n_reserve), str(n_race),
                           str(n_wake), str(POLL_S)], capture_output=True, text=True, timeout=1800,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"the Agent Mail driver failed: {done.stderr.strip().splitlines()[-1:]}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    return {"version": got["version"],
            "reserve": {"latency_us": _summary_us(got["reserve_us"]), "ops": len(got["reserve_us"])},
            "race": _race_summary(got["race"], None, 8),
            "wake": {"latency_us": _summary_us(got["wake_us"]), "n": len(got["wake_us"]), "poll_s": POLL_S}}
