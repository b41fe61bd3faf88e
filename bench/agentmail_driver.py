"""The MCP Agent Mail side of the agent-native benchmark (bench/agentic.py runs it).

Runs inside a separate virtualenv where PyPI's ``mcp-agent-mail`` is installed (it pins an
MCP SDK 1.x and fastmcp, which cannot share zmesh's environment), so it imports nothing of
zmesh. It drives Agent Mail's own FastMCP server in process, through fastmcp's in-memory
client. That leaves out Agent Mail's HTTP transport, which flatters it.

Usage: python agentmail_driver.py WORKDIR N_RESERVE N_RACE N_WAKE POLL_S; prints one JSON
object: {reserve_us, race: [grants per round], wake_us, version}.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def _setup(work: Path) -> None:
    """Agent Mail's settings, all local: a SQLite file and a git mailbox in WORKDIR, no LLM."""
    os.environ.update({
        "DATABASE_URL": f"sqlite+aiosqlite:///{work / 'agentmail.sqlite3'}",
        "STORAGE_ROOT": str(work / "mailbox"),
        "LLM_ENABLED": "false", "TOOLS_LOG_ENABLED": "false", "LOG_RICH_ENABLED": "false",
        "LOG_LEVEL": "ERROR", "HTTP_RATE_LIMIT_ENABLED": "false", "CONTACT_ENFORCEMENT_ENABLED": "false",
        "MCP_TOOLS_MODE": "extended",
    })
    os.chdir(work)


def _data(result: Any) -> Any:
    data = getattr(result, "structured_content", None) or getattr(result, "data", None)
    if isinstance(data, dict) and set(data) == {"result"}:
        return data["result"]
    return data


async def run(work: Path, n_reserve: int, n_race: int, n_wake: int, poll_s: float) -> dict[str, Any]:
    from fastmcp import Client
    from mcp_agent_mail.app import build_mcp_server
    from mcp_agent_mail.db import ensure_schema

    await ensure_schema()
    server = build_mcp_server()
    project = str(work / "project")
    Path(project).mkdir(exist_ok=True)
    async with Client(server) as c:
        await c.call_tool("ensure_project", {"human_key": project})
        names = []
        for _ in range(8):
            got = _data(await c.call_tool("register_agent", {"project_key": project, "program": "bench",
                                                              "model": "none"}))
            names.append(got["name"])

        reserve_us = []
        for i in range(n_reserve):
            t0 = time.perf_counter()
            await c.call_tool("file_reservation_paths", {"project_key": project, "agent_name": names[0],
                                                         "paths": [f"src/f{i}.py"], "ttl_seconds": 3600,
                                                         "exclusive": True})
            reserve_us.append((time.perf_counter() - t0) * 1e6)
            await c.call_tool("release_file_reservations", {"project_key": project, "agent_name": names[0],
                                                            "paths": [f"src/f{i}.py"]})

        race = []
        for r in range(n_race):
            async def one(name: str) -> Any:
                return _data(await c.call_tool("file_reservation_paths", {
                    "project_key": project, "agent_name": name, "paths": [f"race/r{r}.py"],
                    "ttl_seconds": 3600, "exclusive": True}))
            got = await asyncio.gather(*(one(n) for n in names))
            race.append(sum(1 for g in got if g.get("granted")))

        wake_us = []
        for i in range(n_wake):
            sent_at: list[float] = []

            async def poll() -> float:
                while True:
                    inbox = _data(await c.call_tool("fetch_inbox", {"project_key": project, "agent_name": names[1],
                                                                    "limit": 20}))
                    msgs = inbox if isinstance(inbox, list) else (inbox or {}).get("messages", [])
                    if any(m.get("subject") == f"wake {i}" for m in msgs) and sent_at:
                        return time.perf_counter() - sent_at[0]
                    await asyncio.sleep(poll_s)

            async def send() -> None:
                await asyncio.sleep(poll_s * 0.37)  # land at an arbitrary point of the poll period
                sent_at.append(time.perf_counter())
                await c.call_tool("send_message", {"project_key": project, "sender_name": names[0],
                                                   "to": [names[1]], "subject": f"wake {i}", "body_md": "x"})
            took, _ = await asyncio.gather(poll(), send())
            wake_us.append(took * 1e6)
    from importlib.metadata import version

    return {"reserve_us": reserve_us, "race": race, "wake_us": wake_us, "version": version("mcp-agent-mail")}


def main() -> int:
    work = Path(sys.argv[1]).resolve()
    work.mkdir(parents=True, exist_ok=True)
    _setup(work)
    out = asyncio.run(run(work, int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])))
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
