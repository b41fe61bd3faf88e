"""``zmesh agent ...``, ``agents``, ``helpers``, ``blocker ...`` and ``stats``: what the agents
are doing, who can help, and what blocks them.

Rules: options that are request fields come from the protocol table (field_option), so
their ranges, choices and docs are the wire's; a report prints one escaped line (the
agent, its state, its place in the idle queue) and ``--json`` the broker's reply; tables
escape everything that came from users; an unknown agent or blocker is not_found (exit
1), resolving a resolved blocker is a conflict (exit 1), reporting idle or completed
while holding a task claim is a conflict (exit 1). A report from an agent the broker does
not know registers it with the broker's default TTL (as any request from an agent does).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import click

from .. import protocol
from . import main
from ._options import field_argument, field_option, field_type
from ._output import Ctx, emit, esc, json_flag, note, pass_ctx


@main.group()
@json_flag
def agent() -> None:
    """Report an agent's presence: idle, busy, blocked, completed, help."""


def _ago(ts: float | None) -> str:
    """Seconds since a wall-clock time, as people read them (12s, 4m10s, 2h5m)."""
    if ts is None:
        return "-"
    secs = max(0, int(time.time() - ts))
    if secs < 60:
        return f"{secs}s"
    if secs < 3600:
        return f"{secs // 60}m{secs % 60:02d}s"
    return f"{secs // 3600}h{secs % 3600 // 60:02d}m"


def _placed(d: dict[str, Any]) -> str:
    place = f", position {d['position']} in the idle queue" if d.get("position") else ""
    return f"{esc(d['agent'])} {d['state']}{place}"


def _helper_lines(helpers: list[dict[str, Any]]) -> list[str]:
    if not helpers:
        return ["no helpers found (no idle, alive agent covers enough of the capabilities)"]
    return [f"{esc(h['agent'])}\tcover={h['cover']:g}\tmatched={esc(','.join(h['matched'])) or '-'}\t"
            f"missing={esc(','.join(h['missing'])) or '-'}\tposition={h['position']}\t"
            f"waiting={_ago(h['waiting_since'])}" for h in helpers]


def _common(f: Callable[..., Any]) -> Callable[..., Any]:
    """--agent, --message and --cost: what every report may carry."""
    f = field_option("report", "cost", help="Cost spent so far: the agent's running total.")(f)
    f = field_option("report", "message", help="A free note shown with the agent.")(f)
    return field_option("report", "agent", help="The agent reporting (registered with the broker's "
                                                "default TTL if the broker does not know it).")(f)


@agent.command("idle")
@_common
@json_flag
@pass_ctx
def agent_idle(ctx: Ctx, agent: str, message: str | None, cost: float | None) -> None:
    """Report idle: waiting for work. Prints the place in the idle queue (1: waiting longest;
    an agent already idle keeps its place). Exit 1 while it holds a task claim."""
    emit(ctx, ctx.client().report("idle", agent=agent, message=message, cost=cost), _placed)


@agent.command("busy")
@field_argument("report", "task", "task")
@_common
@json_flag
@pass_ctx
def agent_busy(ctx: Ctx, task: str, agent: str, message: str | None, cost: float | None) -> None:
    """Report busy with TASK (claiming a task with `zmesh task claim` does this by itself)."""
    emit(ctx, ctx.client().report("busy", task=task, agent=agent, message=message, cost=cost),
         lambda d: f"{_placed(d)} ({esc(task)})")


@agent.command("completed")
@field_argument("report", "task", "task")
@_common
@json_flag
@pass_ctx
def agent_completed(ctx: Ctx, task: str, agent: str, message: str | None, cost: float | None) -> None:
    """Report TASK done: tasks done + 1 (once per task) and idle again, at the back of the
    idle queue. Exit 1 while the agent still holds a task claim (`zmesh task done` settles it)."""
    emit(ctx, ctx.client().report("completed", task=task, agent=agent, message=message, cost=cost),
         lambda d: f"{esc(d['agent'])} completed {esc(task)}; " + _placed(d).split(" ", 1)[1])


@agent.command("blocked")
@field_option("report", "reason", required=True, help="What blocks the agent.")
@field_option("report", "task", help="The task it is blocked on.")
@_common
@json_flag
@pass_ctx
def agent_blocked(ctx: Ctx, reason: str, task: str | None, agent: str, message: str | None,
                  cost: float | None) -> None:
    """Report blocked (`zmesh blocker raise` also tells the helpers who could unblock it)."""
    emit(ctx, ctx.client().report("blocked", reason=reason, task=task, agent=agent, message=message, cost=cost),
         lambda d: f"{esc(d['agent'])} blocked: {esc(reason)}")


@agent.command("help")
@field_option("report", "reason", required=True, help="What help is needed.")
@field_option("report", "requires", "--require", "require", metavar="CAP",
              help="Capability a helper should have; repeatable (none: every idle agent helps).")
@field_option("report", "threshold", default=0.5, show_default=True,
              help="Share of the capabilities a helper must cover (0..1).")
@field_option("report", "task", help="The task help is needed with.")
@_common
@json_flag
@pass_ctx
def agent_help(ctx: Ctx, reason: str, require: tuple[str, ...], threshold: float, task: str | None,
               agent: str, message: str | None, cost: float | None) -> None:
    """Ask for help; prints the helpers found: idle, alive agents covering the capabilities,
    best cover first, then longest waiting."""
    reply = ctx.client().report("help", reason=reason, requires=list(require), threshold=threshold,
                                task=task, agent=agent, message=message, cost=cost)
    emit(ctx, reply, lambda d: [f"{esc(d['agent'])} asked for help: {esc(reason)}"] + _helper_lines(d["helpers"]))


# ---------------------------------------------------------------- reading
_COLUMNS = ("AGENT", "STATE", "LIVENESS", "TASK", "DONE", "FAILED", "COST", "WAITING", "UPTIME", "CLAIMS")


def _agent_row(a: dict[str, Any]) -> tuple[str, ...]:
    task = a["task"] or (f"({a['last_task']})" if a.get("last_task") else "-")
    return (esc(a["id"]), a["state"] + (f" #{a['position']}" if a.get("position") else ""), a["liveness"],
            esc(task), str(a["completed"]), str(a["failed"]), f"{a['cost']:g}",
            _ago(a["waiting_since"]) if a["waiting_since"] is not None else "-",
            _ago(a["registered"]), str(len(a["claims"])))


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


@main.command()
@json_flag
@pass_ctx
def agents(ctx: Ctx) -> None:
    """Every agent: state (with its place in the idle queue), liveness, current task (or the
    last, in parentheses), tasks done and failed, cost, waiting since, uptime, claims held;
    then the idle queue in arrival order."""
    def human(d: dict[str, Any]) -> list[str]:
        if not d["agents"]:
            return ["no agents"]
        lines = _table([_COLUMNS] + [_agent_row(a) for a in d["agents"]])
        return lines + ["", "idle queue: " + (" ".join(esc(a) for a in d["idle_queue"]) or "(empty)")]
    emit(ctx, ctx.client().agent_list(), human)


@main.command()
@click.argument("capabilities", nargs=-1, metavar="CAP...",
                type=field_type(protocol.OPS["helpers"].by_name["requires"]))
@field_option("helpers", "threshold", default=0.5, show_default=True,
              help="Share of the capabilities a helper must cover (0..1).")
@field_option("helpers", "limit", default=100, show_default=True, help="At most this many helpers.")
@json_flag
@pass_ctx
def helpers(ctx: Ctx, capabilities: tuple[str, ...], threshold: float, limit: int) -> None:
    """Idle, alive agents covering at least --threshold of CAP...: best cover first, then
    longest waiting (no CAP: every idle agent)."""
    found = ctx.client().find_helpers(list(capabilities), threshold, limit=limit)
    emit(ctx, {"helpers": found}, lambda d: _helper_lines(d["helpers"]))


@main.command()
@field_argument("agent_get", "agent", "agent_id")
@json_flag
@pass_ctx
def stats(ctx: Ctx, agent_id: str) -> None:
    """One agent's presence and stats: state, liveness, tasks done and failed, cost, uptime,
    the claims it holds. Exit 1 if the broker does not know it."""
    def human(a: dict[str, Any]) -> list[str]:
        return [f"{esc(a['id'])}: {a['state']}, {a['liveness']}"
                + (f", position {a['position']} in the idle queue" if a.get("position") else ""),
                f"  task={esc(a['task'] or '-')} last_task={esc(a['last_task'] or '-')} "
                f"reason={esc(a['reason'] or '-')}",
                f"  done={a['completed']} failed={a['failed']} cost={a['cost']:g} uptime={_ago(a['registered'])} "
                f"lease={a['lease']} ttl={a['ttl']:g}s expires_in={a['expires_in']}",
                f"  capabilities={esc(','.join(a['capabilities'])) or '-'} "
                f"claims={esc(','.join(a['claims'])) or '-'}"]
    emit(ctx, ctx.client().agent_info(agent_id), human)


# ---------------------------------------------------------------- blockers
@main.group()
@json_flag
def blocker() -> None:
    """Raise, resolve and list blockers ("gang up on the blocker")."""


def _blocker_line(b: dict[str, Any]) -> str:
    task = f" task={esc(b['task'])}" if b.get("task") else ""
    done = f" resolved by {esc(b['resolved_by'] or '-')}" if b["status"] == "resolved" else ""
    return (f"{b['id']}\t{b['status']}\t{b['severity']}\t{esc(b['agent'])}\t{esc(b['type'])}{task}: "
            f"{esc(b['description'])}{done}")


@blocker.command("raise")
@field_option("blocker_raise", "agent", help="The agent that is blocked.")
@field_option("blocker_raise", "type", "--type", "type_", help="Kind of blocker (dependency, access, review...).")
@field_option("blocker_raise", "description", help="What blocks.")
@field_option("blocker_raise", "severity", default="medium", show_default=True, help="How bad it is.")
@field_option("blocker_raise", "requires", "--require", "require", metavar="CAP",
              help="Capability a helper needs; repeatable.")
@field_option("blocker_raise", "task", help="The task it blocks.")
@field_option("blocker_raise", "threshold", default=0.5, show_default=True,
              help="Share of the capabilities a helper must cover (0..1).")
@json_flag
@pass_ctx
def blocker_raise(ctx: Ctx, agent: str, type_: str, description: str, severity: str, require: tuple[str, ...],
                  task: str | None, threshold: float) -> None:
    """Raise a blocker: the agent becomes blocked, blocker.raised is published at once, and
    the helpers found are printed after the blocker's id."""
    reply = ctx.client().report_blocker(type_, description, severity, list(require), task,
                                        threshold=threshold, agent=agent)
    emit(ctx, reply, lambda d: [_blocker_line(d["blocker"])] + _helper_lines(d["helpers"]))


@blocker.command("resolve")
@field_argument("blocker_resolve", "blocker", "blocker_id")
@field_option("blocker_resolve", "agent", help="Who resolved it.")
@field_option("blocker_resolve", "resolution", help="How it was resolved.")
@json_flag
@pass_ctx
def blocker_resolve(ctx: Ctx, blocker_id: str, agent: str | None, resolution: str | None) -> None:
    """Resolve an open blocker (its agent is busy again if it holds a task, else idle).
    Exit 1 if it is unknown or resolved already."""
    emit(ctx, ctx.client().resolve_blocker(blocker_id, resolution=resolution, agent=agent), _blocker_line)


@blocker.command("ls")
@field_option("blocker_list", "status", default="open", show_default=True, help="Which blockers.")
@field_option("blocker_list", "limit", default=1000, show_default=True,
              help="Blockers per page (with --all: per request).")
@field_option("blocker_list", "after", metavar="ID", default="",
              help="Start after this blocker id (the last of the previous page).")
@click.option("--all", "all_", is_flag=True, help="Every page, not only the first.")
@json_flag
@pass_ctx
def blocker_ls(ctx: Ctx, status: str, limit: int, after: str, all_: bool) -> None:
    """List blockers, oldest first (open ones by default). When more follow, says so on
    stderr with the --after to use."""
    client = ctx.client()
    found: list[Any] = []
    while True:
        page = client.blocker_page(status=status, after=after, limit=limit)
        found += page["blockers"]
        more = bool(page["more"])
        if page["blockers"]:
            after = page["blockers"][-1]["id"]
        if not (all_ and more):
            break
    next_after = after if more else None
    if ctx.json:
        emit(ctx, {"blockers": found, "more": more, "next_after": next_after}, lambda d: [])
        return
    for b in found:
        click.echo(_blocker_line(b))
    if more:
        note(ctx, f"more blockers follow; next page: --after {esc(next_after)!r} (or --all)")
