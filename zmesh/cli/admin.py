"""``zmesh admin ...``: force-release claims, purge tasks, requeue dead tasks and dead letters.

Rules: with security on these need an admin key (``ZMESH_KEY`` naming a key the broker
keeps in its allow-list's ``admins/``); any other key is refused (exit 1, code
``forbidden``) and the broker records the refusal as ``audit.refused``. Options that are
request fields come from the protocol table. Exactly-one-of choices are checked here,
before anything is sent (exit 2 naming the options). Bulk work goes in bounded requests
(a page each), so one command never holds the broker in one long transaction.
"""

from __future__ import annotations

from typing import Any

import click

from .. import protocol
from ..errors import UsageError
from . import main
from ._options import field_option, field_type
from ._output import Ctx, emit, esc, json_flag, pass_ctx

#: tasks per request when purging or requeueing in bulk
PAGE = 1000


@main.group()
@json_flag
def admin() -> None:
    """Operator actions on other agents' claims and on tasks (admin key when security is on)."""


def _exactly_one(**given: Any) -> str:
    named = [name for name, value in given.items() if value not in (None, (), False)]
    if len(named) != 1:
        options = " or ".join("--" + n.replace("_", "-") if n != "task_ids" else "TASK" for n in given)
        raise UsageError(f"give exactly one of {options}", {"field": named[1] if len(named) > 1 else next(iter(given))})
    return named[0]


@admin.command("release")
@field_option("admin_release", "task", help="Release this task's claim, whoever holds it.")
@field_option("admin_release", "agent", help="End this agent's lease: every claim and reservation it holds is released.")
@field_option("admin_release", "reason", default="", help="Why (kept in the task history and the audit event).")
@json_flag
@pass_ctx
def release(ctx: Ctx, task: str | None, agent: str | None, reason: str) -> None:
    """Force-release another agent's claim (--task) or all of an agent's claims (--agent).
    Exit 1 if the task is not claimed or the agent is unknown."""
    _exactly_one(task=task, agent=agent)
    out = ctx.client().admin_release(task=task, agent=agent, reason=reason)
    emit(ctx, out, lambda d: f"released {esc(', '.join(d['released'])) or 'nothing'} (held by {esc(d['agent'])})")


@admin.command("purge")
@click.argument("task_ids", nargs=-1, metavar="[TASK]...", type=field_type(protocol.OPS["admin_purge"].by_name["task"]))
@field_option("admin_purge", "status", help="Delete every task of this status (completed or dead).")
@click.option("--limit", type=click.IntRange(1, protocol.MAX_INT), default=None, metavar="N",
              help="With --status: at most N tasks in all (default: every one).")
@json_flag
@pass_ctx
def purge(ctx: Ctx, task_ids: tuple[str, ...], status: str | None, limit: int | None) -> None:
    """Delete tasks: the TASKs named (any status but claimed, and none a task waits on), or
    every task of a --status. Tasks kept are listed with why; exit 1 if a named TASK is
    missing or cannot be purged."""
    _exactly_one(task_ids=task_ids, status=status)
    if limit is not None and status is None:
        raise UsageError("--limit goes with --status", {"field": "limit"})
    client = ctx.client()
    purged: list[str] = []
    kept: list[Any] = []
    if task_ids:
        for task in task_ids:
            purged += client.admin_purge(task=task)["purged"]
    else:
        while limit is None or len(purged) < limit:
            page = client.admin_purge(status=status, limit=min(PAGE, limit - len(purged)) if limit else PAGE)
            purged += page["purged"]
            kept += page["kept"]
            if not page["more"] or not page["purged"]:
                break
    emit(ctx, {"purged": purged, "kept": kept},
         lambda d: [f"purged {len(d['purged'])} task(s)"]
         + [f"kept {esc(k['task'])}: {esc(k['reason'])}" for k in d["kept"]])


@admin.command("requeue")
@click.argument("task_ids", nargs=-1, metavar="[TASK]...", type=field_type(protocol.OPS["admin_requeue"].by_name["task"]))
@click.option("--dead", is_flag=True, help="Requeue every dead task.")
@click.option("--message", "message_id", metavar="ID", type=field_type(protocol.OPS["requeue"].by_name["id"]),
              help="Deliver this message's dead letters again (every dead recipient, or --agent's).")
@field_option("requeue", "agent", help="With --message: only this recipient.")
@json_flag
@pass_ctx
def requeue(ctx: Ctx, task_ids: tuple[str, ...], dead: bool, message_id: str | None, agent: str | None) -> None:
    """Put dead tasks back in the pool with their attempts at zero (TASKs, or --dead for
    every one), or deliver a message's dead letters again (--message). Exit 1 if a TASK is
    missing or not dead."""
    which = _exactly_one(task_ids=task_ids, dead=dead, message=message_id)
    if agent is not None and which != "message":
        raise UsageError("--agent goes with --message", {"field": "agent"})
    client = ctx.client()
    if message_id is not None:
        emit(ctx, client.requeue(message_id, agent=agent),
             lambda d: f"{d['id']} requeued for {esc(', '.join(d['requeued']))}")
        return
    ids = list(task_ids)
    if dead:  # every dead task, a page at a time; requeued ones leave the dead list
        while True:
            page = client.tasks(status="dead", limit=PAGE)
            batch = [t["id"] for t in page if t["id"] not in ids]
            if not batch:
                break
            for task in batch:
                client.admin_requeue(task)
            ids += batch
    else:
        for task in ids:
            client.admin_requeue(task)
    emit(ctx, {"requeued": ids}, lambda d: f"requeued {len(d['requeued'])} task(s)"
         + (f": {esc(', '.join(d['requeued']))}" if d["requeued"] and len(d["requeued"]) <= 20 else ""))
