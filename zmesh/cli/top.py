"""``zmesh top``: a live table of the agents, updated from the event stream.

Rules it keeps:

* The picture is a Roster: one snapshot, then every event after it (Client.watch in a
  background thread). Nothing is polled: the screen is drawn again when an event arrives,
  and once a second so the clocks (waiting since, uptime) move.
* Through a broker outage the last picture stays on screen, marked as reconnecting; the
  stream resumes by itself (watch reconnects and replays what it missed).
* ``q`` (or Ctrl-C) quits with exit 0, and the terminal is restored whatever happened.
* Everything users wrote (ids, tasks, reasons, messages) is shown as plain text: never read
  as rich markup, control characters escaped.
* It needs a terminal; ``--once`` prints the table once instead (scripts, pipes).
"""

from __future__ import annotations

import os
import select
import sys
import termios
import threading
import time
import tty
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..client import Client, Roster
from ..errors import UsageError
from ..protocol import STATUSES, escape_controls
from . import main
from ._output import Ctx, pass_ctx

#: colour of each state, and of an evasive agent's liveness
STATE_STYLE = {"idle": "green", "busy": "cyan", "blocked": "bold red", "help": "yellow"}
EVASIVE_STYLE = "bold magenta"
#: redraw at least this often (seconds), for the clocks
TICK_S = 1.0


def plain(value: Any) -> Text:
    """User text as a rich Text: no markup is interpreted, control characters escaped."""
    return Text(escape_controls("-" if value is None else str(value)))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    secs = max(0, int(seconds))
    if secs < 60:
        return f"{secs}s"
    if secs < 3600:
        return f"{secs // 60}m{secs % 60:02d}s"
    return f"{secs // 3600}h{secs % 3600 // 60:02d}m"


def render(roster: Roster, *, connected: bool = True, now: float | None = None,
           endpoint: str = "") -> Group:
    """The whole screen for one picture of the mesh."""
    now = time.time() if now is None else now
    totals = roster.totals()
    states = totals["states"]
    head = Text()
    head.append("zmesh top ", style="bold")
    head.append(escape_controls(endpoint) + "  ")
    head.append("connected" if connected else "reconnecting...", style="green" if connected else "bold red")
    head.append(f"  seq {totals['seq']}")
    counts = Text()
    counts.append(f"agents {totals['agents']}  ")
    for state in ("idle", "busy", "blocked", "help"):
        counts.append(f"{state} {states.get(state, 0)}", style=STATE_STYLE[state])
        counts.append("  ")
    counts.append(f"evasive {totals['evasive']}", style=EVASIVE_STYLE if totals["evasive"] else "")
    counts.append(f"  idle queue {totals['idle']}  open blockers {totals['blockers']}")
    tasks = Text("tasks  " + "  ".join(f"{s} {totals['tasks'][s]}" for s in STATUSES))

    table = Table(expand=True, show_edge=False, pad_edge=False)
    for column, justify in (("agent", "left"), ("state", "left"), ("live", "left"), ("task", "left"),
                            ("done", "right"), ("failed", "right"), ("cost", "right"),
                            ("waiting", "right"), ("note", "left")):
        table.add_column(column, justify=justify, no_wrap=column != "note")  # type: ignore[arg-type]
    for name in sorted(roster.agents):
        row = roster.agents[name]
        state = row.get("state", "idle")
        position = roster.position(name)
        state_text = Text(state + (f" #{position}" if position else ""), style=STATE_STYLE.get(state, ""))
        live = row.get("liveness", "alive")
        task = row.get("task") or (f"({row['last_task']})" if row.get("last_task") else None)
        waiting = duration(now - row["since"]) if state == "idle" and row.get("since") else "-"
        note = row.get("reason") or row.get("message")
        table.add_row(plain(name), state_text, Text(live, style=EVASIVE_STYLE if live == "evasive" else "dim"),
                      plain(task), str(row.get("completed", 0)), str(row.get("failed", 0)),
                      f"{row.get('cost') or 0:g}", waiting, plain(note))
    parts: list[Any] = [head, counts, tasks, table]
    if roster.blockers:
        parts.append(Text("open blockers", style="bold red"))
        for b in list(roster.blockers.values())[:10]:
            line = Text(f"  {b.get('id')} {b.get('severity', '')} ")
            line.append_text(plain(f"{b.get('agent')}: {b.get('description')}"))
            parts.append(line)
    parts.append(Text("q quits", style="dim"))
    return Group(*parts)


class _Watcher:
    """The background stream: keeps the latest Roster and says when it changed."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.roster: Roster | None = None
        self.connected = True
        self.changed = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="zmesh-top")

    def _connection(self, up: bool) -> None:
        self.connected = up
        self.changed.set()

    def _run(self) -> None:
        try:
            for roster, _event in self.client.watch(on_connection=self._connection, initial=True):
                self.roster = roster
                self.connected = True
                self.changed.set()
        except BaseException as exc:  # shown by the UI thread, never a silent death
            self.error = exc
            self.changed.set()


def _keys(fd: int, timeout: float) -> str:
    ready, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 32).decode(errors="replace") if ready else ""


@main.command()
@click.option("--once", is_flag=True, help="Print the table once and exit (for scripts and pipes).")
@pass_ctx
def top(ctx: Ctx, once: bool) -> None:
    """A live table of the agents (state in colour, liveness, task, tasks done, cost, waiting
    since) with totals, the idle queue and open blockers, updated from the event stream as
    changes happen; it keeps going across a broker restart. q quits. Needs a terminal
    unless --once."""
    client = ctx.client()
    if once:
        Console().print(render(Roster(client.snapshot()), endpoint=client.endpoint))
        return
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("zmesh top needs a terminal (use --once to print the table once)",
                         {"field": "--once"})
    watcher = _Watcher(client)
    watcher.thread.start()
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    console = Console()
    try:
        tty.setcbreak(fd)
        with Live(console=console, auto_refresh=False, screen=True, transient=True) as live:
            drawn = 0.0
            while True:
                if watcher.error is not None:
                    raise watcher.error
                if watcher.changed.is_set() or time.monotonic() - drawn >= TICK_S:
                    watcher.changed.clear()
                    if watcher.roster is not None:
                        live.update(render(watcher.roster, connected=watcher.connected,
                                           endpoint=client.endpoint), refresh=True)
                    drawn = time.monotonic()
                if "q" in _keys(fd, 0.05).lower():
                    return
    except KeyboardInterrupt:
        return
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
