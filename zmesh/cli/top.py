"""``zmesh top``: a live table of the agents, updated from the event stream.

Rules it keeps:

* The picture is a Roster: one snapshot, then every event after it (Client.watch in a
  background thread). Nothing is polled: the screen is drawn again when an event arrives,
  and once a second so the clocks (waiting since, uptime) move.
* The dashboard is on screen at once, before the broker first answers: its header says
  "connecting" ("connecting: broker unreachable, retrying" once a try failed) over an empty
  table, and the table fills in when the first snapshot arrives.
* Through a broker outage the last picture stays on screen, marked as reconnecting; the
  stream resumes by itself (watch reconnects and replays what it missed).
* No log line is ever written over the live screen: while it is shown, the root logger's
  handlers that write to a terminal are taken off (a handler writing to a file, e.g.
  ``2>top.log``, stays) and the latest warning is shown on the dashboard's status line
  instead (cleared when the broker is back); the handlers are put back on exit, after the
  client is closed and the stream has stopped (waiting at most --timeout + 2 s for it), so
  nothing it logs while stopping lands on the terminal either.
* ``q`` (or Ctrl-C) quits with exit 0, and the terminal is restored whatever happened.
* Everything users wrote (ids, tasks, reasons, messages) is shown as plain text: never read
  as rich markup, control characters escaped.
* It needs a terminal; ``--once`` prints the table once instead (scripts, pipes), and with
  the broker unreachable it fails as every command does (exit 3, one line on stderr).
"""

from __future__ import annotations

import logging
import os
import select
import sys
import termios
import threading
import time
import tty
from typing import Any, Callable

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..client import Client, Roster
from ..errors import UsageError
from ..protocol import STATUSES, escape_controls
from ..protocol.records import Snapshot
from . import main
from ._output import Ctx, pass_ctx

#: colour of each state, and of an evasive agent's liveness
STATE_STYLE = {"idle": "green", "busy": "cyan", "blocked": "bold red", "help": "yellow"}
EVASIVE_STYLE = "bold magenta"
#: redraw at least this often (seconds), for the clocks
TICK_S = 1.0
#: the picture before the first snapshot: no agents, no tasks (the counts are shown as "-")
_NOTHING_YET: Snapshot = {"seq": 0, "agents": [], "idle_queue": [], "blockers": [],
                                "tasks": {s: 0 for s in STATUSES}}


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


def render(roster: Roster | None, *, connected: bool = True, now: float | None = None,
           endpoint: str = "", status: str | None = None) -> Group:
    """The whole screen for one picture of the mesh. ``roster`` None: no snapshot yet (the
    header says connecting, and with ``connected`` False that the broker is unreachable; the
    table is empty and the counts are "-"). ``status``: the latest warning, on the status line."""
    now = time.time() if now is None else now
    known = roster is not None
    roster = roster if roster is not None else Roster(_NOTHING_YET)
    totals = roster.totals()
    states = totals["states"]

    def count(value: Any) -> str:
        return str(value) if known else "-"

    head = Text()
    head.append("zmesh top ", style="bold")
    head.append(escape_controls(endpoint) + "  ")
    if not known:
        head.append("connecting..." if connected else "connecting: broker unreachable, retrying",
                    style="yellow" if connected else "bold red")
    else:
        head.append("connected" if connected else "reconnecting...", style="green" if connected else "bold red")
    head.append(f"  seq {count(totals['seq'])}")
    counts = Text()
    counts.append(f"agents {count(totals['agents'])}  ")
    for state in ("idle", "busy", "blocked", "help"):
        counts.append(f"{state} {count(states.get(state, 0))}", style=STATE_STYLE[state])
        counts.append("  ")
    counts.append(f"evasive {count(totals['evasive'])}", style=EVASIVE_STYLE if totals["evasive"] else "")
    counts.append(f"  idle queue {count(totals['idle'])}  open blockers {count(totals['blockers'])}")
    tasks = Text("tasks  " + "  ".join(f"{s} {count(totals['tasks'][s])}" for s in STATUSES))

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
    parts: list[Any] = [head]
    if status:  # the status line: one line, cut to the screen's width
        parts.append(Text(escape_controls(status), style="yellow", no_wrap=True, overflow="ellipsis"))
    parts += [counts, tasks, table]
    if roster.blockers:
        parts.append(Text("open blockers", style="bold red"))
        for b in list(roster.blockers.values())[:10]:
            line = Text(f"  {b.get('id')} {b.get('severity', '')} ")
            line.append_text(plain(f"{b.get('agent')}: {b.get('description')}"))
            parts.append(line)
    parts.append(Text("q quits", style="dim"))
    return Group(*parts)


class _Watcher:
    """The background stream: keeps the latest Roster, whether the broker answers, and the
    latest warning logged since it last came back; says when any of them changed."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.roster: Roster | None = None
        self.connected = True
        self.status: str | None = None
        self.changed = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="zmesh-top")

    def _connection(self, up: bool) -> None:
        self.connected = up
        if up:
            self.status = None  # the outage's warnings are over
        self.changed.set()

    def note(self, line: str) -> None:
        self.status = line
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


def _to_terminal(handler: logging.Handler) -> bool:
    """Whether ``handler`` writes to a terminal (it would write over the live screen)."""
    stream = getattr(handler, "stream", None)
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # not a file, or a closed one
        return False


class _LogToStatus(logging.Handler):
    """While the dashboard is shown (``with``): the root logger's handlers that write to a
    terminal are off, and each warning goes to ``note`` (one line: time and message) instead.
    On exit the handlers are back as they were."""

    def __init__(self, note: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self._note = note
        self._off: list[logging.Handler] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            when = time.strftime("%H:%M:%S", time.localtime(record.created))
            self._note(f"{when} {record.levelname.lower()}: {' '.join(record.getMessage().split())}")
        except Exception:
            self.handleError(record)

    def __enter__(self) -> "_LogToStatus":
        root = logging.getLogger()
        root.addHandler(self)  # first: a record never finds no handler (logging's lastResort writes to stderr)
        self._off = [h for h in root.handlers if h is not self and _to_terminal(h)]
        for handler in self._off:
            root.removeHandler(handler)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        for handler in self._off:
            root.addHandler(handler)
        self._off = []
        root.removeHandler(self)


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
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    console = Console()
    with _LogToStatus(watcher.note):
        try:
            watcher.thread.start()
            tty.setcbreak(fd)
            _show(watcher, fd, console, client.endpoint)
        except KeyboardInterrupt:
            return
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            # stop the stream before the handlers are back: what it logs while stopping
            # (a snapshot in flight to a broker that is down) stays off the terminal
            client.close()
            watcher.thread.join(timeout=ctx.timeout + 2)


def _show(watcher: _Watcher, fd: int, console: Console, endpoint: str) -> None:
    """The live screen until q (or the stream's error, raised)."""
    with Live(console=console, auto_refresh=False, screen=True, transient=True) as live:
        drawn = 0.0
        while True:
            if watcher.error is not None:
                raise watcher.error
            if watcher.changed.is_set() or time.monotonic() - drawn >= TICK_S:
                watcher.changed.clear()
                live.update(render(watcher.roster, connected=watcher.connected, endpoint=endpoint,
                                   status=watcher.status), refresh=True)
                drawn = time.monotonic()
            if "q" in _keys(fd, 0.05).lower():
                return
