"""``zmesh task ...``: create, claim, settle, renew, show and list tasks.

Rules: options that are request fields come from the protocol table (field_option), so
their ranges and docs are the wire's; text output is one escaped line per task; a claim
prints the same JSON shape (``task, agent, token, lease, expires_in``) from ``claim``,
``next`` and ``renew``; a lost race and "nothing to claim" are both errors on stderr
(exit 1) with nothing on stdout.
"""

from __future__ import annotations

from typing import Any, Callable

import click
import orjson

from ..errors import NothingToClaim
from . import main
from ._options import field_argument, field_option
from ._output import Ctx, emit, esc, json_flag, note, pass_ctx

_CLAIM_TTL_HELP = ("Claim TTL in seconds: the claim lapses unless renewed (`task renew`). An agent "
                   "that has no lease yet gets one with this TTL too (else the broker's default, 30 s).")


@main.group()
@json_flag
def task() -> None:
    """Create, claim and settle tasks."""


def task_line(t: dict[str, Any]) -> str:
    owner = f" owner={esc(t['owner'])} token={t['token']}" if t.get("owner") else ""
    return f"{esc(t['id'])}\t{t['status']}\tprio={t['priority']}\tattempts={t['attempts']}{owner}"


def task_lines(t: dict[str, Any]) -> list[str]:
    lines = [task_line(t), f"  type={esc(t['type'])} requires={esc(','.join(t['requires'])) or '-'} "
             f"depends_on={esc(','.join(t['depends_on'])) or '-'} max_attempts={t['max_attempts']}"]
    if t.get("data") is not None:
        lines.append(f"  data={orjson.dumps(t['data']).decode()}")
    if t.get("result") is not None:
        lines.append(f"  result={orjson.dumps(t['result']).decode()}")
    for h in t["history"]:
        text = f"  {h['event']} by {esc(h.get('agent'))}"
        lines.append(text + (f": {esc(h['error'])}" if h.get("error") else ""))
    return lines


def claim_json(claim: Any) -> dict[str, Any]:
    """One claim, the same shape from claim, next and renew (the wire's claim reply)."""
    return {"task": claim.task_id, "agent": claim.agent, "token": claim.token,
            "lease": claim.lease, "expires_in": claim.expires_in}


@task.command("add")
@field_argument("task_create", "id", "task_id")
@field_option("task_create", "type", "--type", "type_", default="task", show_default=True,
              help="Free task type.")
@field_option("task_create", "data", help="Any JSON value (inline, @FILE, or - for stdin).")
@field_option("task_create", "priority", default=0, show_default=True, help="Higher is claimed first.")
@field_option("task_create", "requires", metavar="CAP",
              help="Capability an agent needs for `task next`; repeatable.")
@field_option("task_create", "max_attempts", default=3, show_default=True,
              help="Failures before the task is dead.")
@field_option("task_create", "depends_on", metavar="ID", help="Task that must complete first; repeatable.")
@json_flag
@pass_ctx
def task_add(ctx: Ctx, task_id: str, type_: str, data: Any, priority: int, requires: tuple[str, ...],
             max_attempts: int, depends_on: tuple[str, ...]) -> None:
    """Create a task (waiting until its dependencies complete, else available)."""
    t = ctx.client().create_task(task_id, type=type_, data=data, priority=priority, requires=requires,
                                 max_attempts=max_attempts, depends_on=depends_on)
    emit(ctx, t, task_line)


@task.command("claim")
@field_argument("claim", "task", "task_id")
@field_option("claim", "agent", help="Agent the claim is held by (its lease keeps the claim alive).")
@field_option("claim", "ttl", help=_CLAIM_TTL_HELP)
@json_flag
@pass_ctx
def task_claim(ctx: Ctx, task_id: str, agent: str, ttl: float | None) -> None:
    """Claim a task by id; prints the fencing token. Exit 1 if another agent holds it."""
    claim = ctx.client().try_claim(task_id, agent=agent, ttl=ttl)
    emit(ctx, claim_json(claim), lambda d: str(d["token"]))


@task.command("next")
@field_option("claim_next", "agent", help="Agent the claim is held by.")
@field_option("claim_next", "capabilities", "--capability", "capability", metavar="CAP",
              help="Capability of the agent; repeatable (default: the ones it registered).")
@field_option("claim_next", "ttl", help=_CLAIM_TTL_HELP)
@json_flag
@pass_ctx
def task_next(ctx: Ctx, agent: str, capability: tuple[str, ...], ttl: float | None) -> None:
    """Claim the best available task the capabilities cover (highest priority, then oldest);
    prints its id and token. Exit 1 if there is none."""
    caps = list(capability) if capability else None
    claim = ctx.client().claim_next(agent=agent, capabilities=caps, ttl=ttl)
    if claim is None:
        raise NothingToClaim(f"no available task matches agent '{agent}'"
                             + (f" with capabilities {', '.join(caps)}" if caps else ""),
                             {"agent": agent, "capabilities": caps})
    emit(ctx, claim_json(claim) | {"record": claim.task}, lambda d: f"{esc(d['task'])} {d['token']}")


def _held(op: str) -> Callable[[Any], Any]:
    """TASK_ID, --agent and --token: the claim a settling command acts on."""
    argument = field_argument(op, "task", "task_id")
    agent = field_option(op, "agent", help="Agent that holds the claim.")
    token = field_option(op, "token", help="Fencing token from `task claim` (refused if not current).")
    return lambda f: argument(agent(token(f)))


@task.command("done")
@_held("complete")
@field_option("complete", "result", help="Any JSON value (inline, @FILE, or - for stdin).")
@json_flag
@pass_ctx
def task_done(ctx: Ctx, task_id: str, agent: str, token: int | None, result: Any) -> None:
    """Complete a claimed task (its owner only); tasks waiting on it become available."""
    emit(ctx, ctx.client().complete(task_id, agent=agent, token=token, result=result), task_line)


@task.command("fail")
@_held("fail")
@field_option("fail", "error", help="What went wrong (kept in the task's history).")
@json_flag
@pass_ctx
def task_fail(ctx: Ctx, task_id: str, agent: str, token: int | None, error: str) -> None:
    """Record a failed attempt (the task goes back to the pool, or dead after max attempts)."""
    emit(ctx, ctx.client().fail(task_id, agent=agent, token=token, error=error), task_line)


@task.command("release")
@_held("release")
@json_flag
@pass_ctx
def task_release(ctx: Ctx, task_id: str, agent: str, token: int | None) -> None:
    """Give a claimed task back to the pool (no attempt counted)."""
    emit(ctx, ctx.client().release(task_id, agent=agent, token=token), task_line)


@task.command("renew")
@_held("renew")
@field_option("renew", "ttl", help="New claim TTL in seconds from now (default: the claim's own TTL).")
@json_flag
@pass_ctx
def task_renew(ctx: Ctx, task_id: str, agent: str, token: int | None, ttl: float | None) -> None:
    """Extend a claim during long work and renew the agent's lease (a shell job calls this
    periodically); prints the seconds left. Exit 1 if the claim lapsed or was replaced."""
    claim = ctx.client().renew(task_id, agent=agent, token=token, ttl=ttl)
    emit(ctx, claim_json(claim), lambda d: "no expiry" if d["expires_in"] is None else f"{d['expires_in']:g}")


@task.command("show")
@field_argument("task_get", "task", "task_id")
@json_flag
@pass_ctx
def task_show(ctx: Ctx, task_id: str) -> None:
    """One task with its owner, token and history."""
    emit(ctx, ctx.client().task(task_id), task_lines)


@task.command("ls")
@field_option("task_list", "status", help="Only tasks in this status.")
@field_option("task_list", "limit", default=1000, show_default=True,
              help="Tasks per page (with --all: per request).")
@field_option("task_list", "after", metavar="ID", default="",
              help="Start after this task id (the last of the previous page).")
@click.option("--all", "all_", is_flag=True, help="Every page, not only the first.")
@json_flag
@pass_ctx
def task_ls(ctx: Ctx, status: str | None, limit: int, after: str, all_: bool) -> None:
    """List tasks in id order (available ones in claim order). When more follow, says so on
    stderr with the --after to use."""
    client = ctx.client()
    tasks: list[Any] = []
    while True:
        page = client.task_page(status=status, after=after, limit=limit)
        tasks += page["tasks"]
        more = bool(page["more"])
        if page["tasks"]:
            after = page["tasks"][-1]["id"]
        if not (all_ and more):
            break
    next_after = after if more else None
    if ctx.json:
        emit(ctx, {"tasks": tasks, "more": more, "next_after": next_after}, lambda d: [])
        return
    for t in tasks:
        click.echo(task_line(t))
    if more:
        note(ctx, f"more tasks follow; next page: --after {esc(next_after)!r} (or --all)")

