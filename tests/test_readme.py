"""The README's commands as written: .ci/run runs the test command verbatim, the broker
command starts a broker in a fresh clone with a new venv (embedded LMDB, no config file),
and the hook settings, the guard command and the MCP setup work against a real broker."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from zmesh import Client
from zmesh.testing import free_port, ping

from .conftest import wait_for

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [blocks[0].strip(), blocks[1].strip()]


def test_ci_runs_the_readme_test_command() -> None:
    run, test = readme_commands()
    assert "zmesh broker" in run and "pytest" in test
    assert test in (ROOT / ".ci" / "run").read_text().splitlines()


@pytest.mark.slow
def test_readme_broker_command_in_a_fresh_clone(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    run, _ = readme_commands()
    port, pub = free_port(), free_port()
    home = tmp_path / "home"
    home.mkdir()
    # the command is run as written; only the environment moves it off the default
    # ports and $HOME (tests use free loopback ports and temporary dirs)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZMESH_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(HOME=str(home), ZMESH_BIND=f"tcp://127.0.0.1:{port}", ZMESH_PUB_BIND=f"tcp://127.0.0.1:{pub}",
               ZMESH_DISCOVERY="0", PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    env.pop("XDG_DATA_HOME", None)
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen(["bash", "-c", run], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is not None or ping(f"tcp://127.0.0.1:{port}", 0.3),
                 timeout=300, interval=0.5, what="the README broker")
        assert proc.poll() is None, (tmp_path / "run.log").read_text()
        assert (home / ".local" / "share" / "zmesh" / "data.mdb").exists(), "default data dir"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()
    assert "zmesh broker ready" in (tmp_path / "run.log").read_text()


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _zmesh(command: str, endpoint: str) -> list[str]:
    """A README command line as this test runs it: this Python's zmesh, bound to the test's broker."""
    words = shlex.split(command)
    assert words[0] == "zmesh", command
    return [sys.executable, "-m", "zmesh", "--broker", endpoint, *words[1:]]


def test_the_readme_hook_settings_work_as_written(broker, tmp_path: Path) -> None:
    """The Claude Code settings in the README, parsed as JSON, each command run as Claude Code
    runs it (the event on stdin): the Stop hook blocks on work, the prompt hook injects."""
    block = re.search(r"```json\n(.*?)```", _section("Coding-agent hooks"), re.S)
    assert block is not None
    settings = json.loads(block.group(1))["hooks"]
    commands = {event: entry[0]["hooks"][0]["command"] for event, entry in settings.items()}
    assert set(commands) == {"Stop", "UserPromptSubmit"}
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path))
    env.pop("ZMESH_BROKER", None)
    agent = _zmesh(commands["Stop"], broker.endpoint)[-1]
    with Client(broker.endpoint) as ops:
        ops.create_task("from-readme")
        ops.send("urgent", to=agent, priority="critical")
    stop = subprocess.run(_zmesh(commands["Stop"], broker.endpoint), input='{"session_id": "r", "stop_hook_active": false}',
                          capture_output=True, text=True, env=env, timeout=60)
    assert stop.returncode == 0 and json.loads(stop.stdout)["decision"] == "block", stop.stderr
    prompt = subprocess.run(_zmesh(commands["UserPromptSubmit"], broker.endpoint), input='{"session_id": "r"}',
                            capture_output=True, text=True, env=env, timeout=60)
    assert prompt.returncode == 0 and "urgent" in json.loads(prompt.stdout)["hookSpecificOutput"]["additionalContext"]


def test_the_readme_guard_command_works_as_written(broker, tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("needs git")
    block = re.search(r"```sh\n(.*?)```", _section("Git guard"), re.S)
    assert block is not None
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True, timeout=30)
    done = subprocess.run(_zmesh(block.group(1).strip(), broker.endpoint), cwd=repo, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "guard check" in (repo / ".git" / "hooks" / "pre-commit").read_text()


def _mcp_whoami(argv: list[str], env: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run an MCP server command as a client would, over stdio: its whoami and tool schemas."""
    import anyio
    from mcp import StdioServerParameters
    from mcp.client.session import ClientSession
    from mcp.client.stdio import stdio_client

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        params = StdioServerParameters(command=argv[0], args=argv[1:], env=env)
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = {t.name: t.input_schema for t in (await session.list_tools()).tools}
                who = await session.call_tool("whoami", {})
                assert who.structured_content is not None
                return who.structured_content, tools
    return anyio.run(run)


def test_the_readme_mcp_setup_works_as_written(broker) -> None:
    """The Claude Code line and the Codex table in the README: the command each client would
    start serves the tools as the agent named, and Codex's tool timeout outlasts the longest
    wait the server allows."""
    section = _section("Coding agents: `zmesh mcp`")
    env = dict(os.environ)
    env.pop("ZMESH_BROKER", None)
    line = next(x for x in re.findall(r"```sh\n(.*?)```", section, re.S)[0].splitlines() if x.startswith("claude"))
    words = shlex.split(line)
    assert words[:3] == ["claude", "mcp", "add"] and "--" in words
    who, _ = _mcp_whoami(_zmesh(shlex.join(words[words.index("--") + 1:]), broker.endpoint), env)
    assert who["agent"] == "cc-1" and who["capabilities"] == ["python"]
    block = re.search(r"```toml\n(.*?)```", section, re.S)
    assert block is not None
    server = tomllib.loads(block.group(1))["mcp_servers"]["zmesh"]
    who, tools = _mcp_whoami(_zmesh(shlex.join([server["command"], *server["args"]]), broker.endpoint), env)
    assert who["agent"] == "codex-1"
    longest = tools["wait_for_work"]["properties"]["timeout_s"]["maximum"]
    assert server["tool_timeout_sec"] > longest, "a wait must end before Codex gives up on the call"


def test_the_readme_tour_runs_as_written(broker, tmp_path: Path) -> None:
    """The 5-minute tour's second block, line by line in one bash, against the test's broker:
    every line exits 0 (the conflict line prints its 1 itself). Only the `export` line (the
    test's broker replaces 7700) and `zmesh top` (interactive; tests/test_top.py drives it)
    are left out; `zmesh events &` runs in the background and is stopped by its PID."""
    text = _section("A 5-minute tour")
    block = re.findall(r"```sh\n(.*?)```", text, re.S)[1]
    lines = [x for x in block.splitlines() if x.strip()]
    assert lines[0].startswith("export ZMESH_BROKER=")
    script = ["set -u", "fail() { echo \"FAILED ($1): $2\" >&2; kill $EVENTS 2>/dev/null; exit 1; }"]
    for line in lines[1:]:
        command = line.split("  #")[0].strip()
        if command.startswith("zmesh top"):
            continue
        if command.endswith("&"):
            script.append(f"{command} EVENTS=$!")
            continue
        script.append(f"{command} || fail $? {shlex.quote(command)}")
    script.append("kill $EVENTS; wait $EVENTS 2>/dev/null; exit 0")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZMESH_")}
    env.update(ZMESH_BROKER=broker.endpoint, PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    done = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "\n1\n" in done.stdout  # bob's claim of build: conflict, exit 1
    with Client(broker.endpoint) as c:
        assert c.task("build")["status"] == "completed"
        queued = [m for m in c.messages(agent="carol") if m.get("type") == "task.assign"]
        assert queued and queued[0]["context"]["task"] == "deploy"


def test_the_readme_presence_example_runs_as_written(broker, tmp_path: Path) -> None:
    """The agent half of the presence example (up to the coordinator's endless watch), run by
    Python as written with $ZMESH_BROKER naming the test's broker."""
    text = _section("Agents: presence, liveness, helpers, blockers")
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    code = code[:code.index("coordinator = Client()")]
    env = dict(os.environ, ZMESH_BROKER=broker.endpoint)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
