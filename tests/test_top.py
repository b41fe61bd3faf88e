"""``zmesh top`` in a real pseudo-terminal (pexpect) against a real broker process: it shows
the agents and the counts, changes within a second of a state change, says when the broker
is away and keeps working across a broker restart, and q quits with exit 0 and the
terminal restored. Started with no broker it draws its dashboard at once (connecting,
unreachable) and fills in when a broker comes up on that port; no log line is ever written
over the screen (the latest warning is on its status line). The renderer is also tested on
its own (escaping, colours, totals)."""

from __future__ import annotations

import io
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pexpect
import pytest
from rich.console import Console
from rich.table import Table

from zmesh import Client
from zmesh.cli.top import EVASIVE_STYLE, STATE_STYLE, render
from zmesh.client import Roster
from zmesh.testing import BrokerProcess, free_port

from .conftest import ROOT


def spawn_top(endpoint: str, *extra: str) -> pexpect.spawn:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZMESH_")}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT), TERM="xterm-256color", COLUMNS="160", LINES="40")
    return pexpect.spawn(sys.executable, ["-m", "zmesh", "--broker", endpoint, "--timeout", "2", "top", *extra],
                         env=env, encoding="utf-8", dimensions=(40, 160), timeout=15)


@contextmanager
def watching(b: BrokerProcess) -> Iterator[pexpect.spawn]:
    """``zmesh top`` on ``b``'s endpoint, stopped by PID at the end."""
    child = spawn_top(b.endpoint)
    child.logfile_read = io.StringIO()  # all it wrote to the terminal: see raw_log_lines
    try:
        yield child
    finally:
        if child.isalive():
            child.kill(9)
        child.close(force=True)


@pytest.fixture
def top(broker_factory: Callable[..., BrokerProcess]) -> Iterator[tuple[BrokerProcess, Any]]:
    b = broker_factory()
    with watching(b) as child:
        yield b, child


@pytest.fixture
def top_before_broker(tmp_path: Path) -> Iterator[tuple[BrokerProcess, Any]]:
    """top started on two free ports where no broker runs yet, and a (not started) broker
    for those ports; both are stopped by PID at the end."""
    port = free_port()
    pub = free_port()
    while pub == port:
        pub = free_port()
    b = BrokerProcess(tmp_path / "data", port=port, pub_port=pub)
    try:
        with watching(b) as child:
            yield b, child
    finally:
        b.stop()
        b.kill()


def raw_log_lines(child: pexpect.spawn) -> list[str]:
    """Log records (the CLI's stderr format, "... WARNING zmesh.client: ...") that reached the
    terminal: none may, the screen is the dashboard's."""
    written = child.logfile_read.getvalue()
    return [line for line in written.splitlines() if "WARNING" in line or " zmesh." in line]


def within_a_second(child: pexpect.spawn, pattern: str) -> float:
    """Wait for ``pattern`` on the screen; returns how long it took (at most 1 s)."""
    start = time.monotonic()
    child.expect(pattern, timeout=1.0)
    return time.monotonic() - start


def test_top_shows_agents_changes_within_a_second_and_q_quits(top: tuple[BrokerProcess, Any]) -> None:
    b, child = top
    child.expect("agents 0", timeout=15)  # the first picture, from the snapshot
    with Client(b.endpoint, agent="alpha", capabilities=["py"], ttl=30) as alpha, \
            Client(b.endpoint, agent="beta", ttl=30) as beta:
        alpha.idle()
        beta.idle()
        # one frame, in screen order: the counts, then the table, then the blockers
        within_a_second(child, "agents 2.*idle 2.*alpha.*beta")
        alpha.busy("job-77", message="reviewing")
        within_a_second(child, "busy 1.*alpha.*job-77.*reviewing")  # acknowledged above: on screen within 1 s
        beta.report_blocker("access", "no deploy key", "high")
        within_a_second(child, "blocked 1.*open blockers 1.*beta.*no deploy key")
        alpha.completed("job-77")
        within_a_second(child, "idle 1.*busy 0.*alpha.*idle #1")
        assert alpha.stats()["completed"] == 1
    child.send("q")
    child.expect(pexpect.EOF, timeout=5)
    child.close()
    assert child.exitstatus == 0
    assert "\x1b[?1049l" in (child.before or "")  # left the alternate screen: the terminal is back


def test_top_keeps_working_across_a_broker_restart(top: tuple[BrokerProcess, Any]) -> None:
    """The broker gone mid-session: the header says so, the stream's warning is on the status
    line (never a log line over the screen), the last picture stays; back when it is."""
    b, child = top
    child.expect("agents 0", timeout=15)
    with Client(b.endpoint, agent="gamma", ttl=60, heartbeat=False) as gamma:
        gamma.idle()
        within_a_second(child, "idle 1.*gamma")
        b.stop()
        child.expect("reconnecting.*warning: event stream: broker unreachable.*gamma", timeout=30)
        assert raw_log_lines(child) == []
        b.start()
        child.expect("connected", timeout=30)
        gamma.busy("after-restart")
        within_a_second(child, "busy 1.*gamma.*after-restart")
    quit_and_check(child)


def quit_and_check(child: Any) -> None:
    """q quits: exit 0, the terminal back from the alternate screen, no log line written."""
    child.send("q")
    child.expect(pexpect.EOF, timeout=10)
    child.close()
    assert child.exitstatus == 0
    assert "\x1b[?1049l" in (child.before or "")
    assert raw_log_lines(child) == []


def test_top_without_a_broker_draws_its_dashboard_at_once_and_q_quits(
        top_before_broker: tuple[BrokerProcess, Any]) -> None:
    _b, child = top_before_broker
    # the header and the empty table at once, then the failed try said in the header, and
    # the warning on the status line (not as a log line over the screen)
    child.expect("zmesh top .*connecting", timeout=15)
    child.expect("connecting: broker unreachable, retrying.*warning: watch: broker unreachable.*"
                 "agents -.*agent.*state.*task.*q quits", timeout=15)
    child.expect("warning: watch: broker unreachable", timeout=15)  # the next try: still shown, still no log line
    assert raw_log_lines(child) == []
    quit_and_check(child)  # nor while it stopped


def test_top_fills_in_when_the_broker_comes_up(top_before_broker: tuple[BrokerProcess, Any]) -> None:
    b, child = top_before_broker
    child.expect("connecting: broker unreachable, retrying", timeout=15)
    b.start()
    child.expect("connected", timeout=30)  # the first snapshot, after the retry's backoff
    with Client(b.endpoint, agent="epsilon", ttl=30) as eps:
        eps.idle()
        within_a_second(child, "connected.*agents 1.*idle 1.*epsilon")
        eps.busy("first-job")
        within_a_second(child, "busy 1.*epsilon.*first-job")
    quit_and_check(child)


def test_top_once_without_a_broker_exits_3_with_one_line(tmp_path: Path) -> None:
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("ZMESH_")}
    r = subprocess.run([sys.executable, "-m", "zmesh", "--broker", f"tcp://127.0.0.1:{free_port()}", "--timeout",
                        "0.5", "top", "--once"], capture_output=True, text=True, env=env,
                       stdin=subprocess.DEVNULL, timeout=30)
    assert r.returncode == 3 and r.stdout == ""
    assert r.stderr.startswith("zmesh: unreachable: ") and r.stderr.count("\n") == 1


def test_top_needs_a_terminal_or_once(broker: BrokerProcess) -> None:
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("ZMESH_")}
    r = subprocess.run([sys.executable, "-m", "zmesh", "--broker", broker.endpoint, "top"], capture_output=True,
                       text=True, env=env, stdin=subprocess.DEVNULL, timeout=30)
    assert r.returncode == 2 and "needs a terminal" in r.stderr and r.stderr.count("\n") == 1
    with Client(broker.endpoint, agent="delta", heartbeat=False) as c:
        c.idle()
        r = subprocess.run([sys.executable, "-m", "zmesh", "--broker", broker.endpoint, "top", "--once"],
                           capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=30)
    assert r.returncode == 0 and "delta" in r.stdout and "agents 1" in r.stdout and "idle 1" in r.stdout


def _roster() -> Roster:
    now = 1_000_000.0
    agents = [
        {"id": "evil[bold]x[/bold]\x1b[31m", "state": "busy", "liveness": "alive", "task": "t\n1",
         "last_task": None, "completed": 3, "failed": 1, "cost": 2.5, "since": now - 5, "reason": None,
         "message": "[link=http://x]click[/link]"},
        {"id": "idler", "state": "idle", "liveness": "evasive", "task": None, "last_task": "t0",
         "completed": 0, "failed": 0, "cost": 0.0, "since": now - 125, "reason": None, "message": None},
        {"id": "stuck", "state": "blocked", "liveness": "alive", "task": None, "last_task": None,
         "completed": 0, "failed": 0, "cost": 0.0, "since": now, "reason": "no key", "message": None},
    ]
    return Roster({"seq": 42, "agents": agents, "idle_queue": ["idler"],
                   "blockers": [{"id": "blk-1", "agent": "stuck", "severity": "high", "description": "no key"}],
                   "tasks": {"waiting": 0, "available": 2, "claimed": 1, "completed": 5, "dead": 0}})


def test_render_escapes_user_text_and_colours_states() -> None:
    console = Console(width=160, record=True, color_system="truecolor", force_terminal=True)
    console.print(render(_roster(), connected=False, now=1_000_000.0, endpoint="tcp://h:1"))
    text = console.export_text()
    assert "evil[bold]x[/bold]\\x1b[31m" in text  # markup shown literally, the escape escaped
    assert "[link=http://x]click[/link]" in text and "t\\n1" in text
    assert "agents 3" in text and "idle 1" in text and "busy 1" in text and "blocked 1" in text
    assert "evasive 1" in text and "open blockers 1" in text and "seq 42" in text
    assert "reconnecting" in text and "idle #1" in text and "2m05s" in text  # idler waiting since
    assert "available 2" in text and "completed 5" in text
    group = render(_roster(), now=1_000_000.0)
    table = next(r for r in group.renderables if isinstance(r, Table))
    states = {str(cell).split()[0]: cell.style for cell in table.columns[1].cells}
    assert states == {"busy": STATE_STYLE["busy"], "idle": STATE_STYLE["idle"], "blocked": STATE_STYLE["blocked"]}
    live = {str(cell): cell.style for cell in table.columns[2].cells}
    assert live["evasive"] == EVASIVE_STYLE and live["alive"] != EVASIVE_STYLE


def test_render_before_the_first_snapshot_and_the_status_line() -> None:
    console = Console(width=160, record=True, color_system="truecolor", force_terminal=True)
    console.print(render(None, endpoint="tcp://h:1"))
    text = console.export_text()
    assert "connecting..." in text and "unreachable" not in text
    assert "agents -" in text and "idle -" in text and "seq -" in text and "available -" in text
    assert "agent" in text and "state" in text and "q quits" in text  # the (empty) table's columns
    console.print(render(None, connected=False, endpoint="tcp://h:1",
                         status="12:00:00 warning: watch: broker unreachable\x1b[2J [bold]x"))
    text = console.export_text()
    assert "connecting: broker unreachable, retrying" in text
    assert "warning: watch: broker unreachable\\x1b[2J [bold]x" in text  # escaped, no markup
    lines = text.splitlines()
    assert lines.index(next(row for row in lines if "12:00:00" in row)) == 1  # under the header
    console.print(render(_roster(), connected=True, now=1_000_000.0, endpoint="tcp://h:1"))
    text = console.export_text()
    assert "connected" in text and "12:00:00" not in text and "agents 3" in text
