"""``zmesh send``, ``assign``, ``read``, ``ack``, ``unacked``, ``dead-letters``, ``msgstats``:
messages between agents and operators.

Rules: options that are request fields come from the protocol table (field_option); text
from users is escaped in human output; ``--json`` prints the broker's reply (read: the
messages); a bad ``--since`` or ``--filter`` is a usage error (exit 2) before anything is
sent; an unknown message is not_found and a stale ack is refused (exit 1); a broker that
does not answer within the timeout is exit 3, never a hang. ``read --filter`` is a regular
expression applied here, on subject, body and sender (never in the broker, whose loop a
pathological pattern must not stall); ``read`` marks what it printed read unless ``--peek``.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import click
import orjson

from .. import protocol
from ..errors import UsageError
from ..protocol.fields import DEFAULT_MAX_DELIVER
from . import main
from ._options import IdType, Pattern, Since, field_argument, field_option, field_type
from ._output import Ctx, emit, esc, json_flag, pass_ctx

def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).isoformat(timespec="seconds")


def _address(to: dict[str, Any]) -> str:
    return "all" if to.get("kind") == "all" else f"{to.get('kind')}:{esc(to.get('name'))}"


def _text(body: Any) -> str:
    return body if isinstance(body, str) else orjson.dumps(body).decode()


def _line(m: dict[str, Any]) -> str:
    state = ""
    if m.get("delivery"):
        d = m["delivery"]
        state = f"\t{d['state']}" + (" read" if d["read_at"] else " unread") + (" acked" if d["acked_at"] else "")
    tags = f" [{esc(','.join(m['tags']))}]" if m["tags"] else ""
    body = "" if m["body"] is None else ": " + esc(_text(m["body"]))
    ack = " (ack)" if m["requires_ack"] else ""
    return (f"{m['id']}\t{_when(m['ts'])}\t{m['priority']}\t{esc(m['from'] or '-')} -> {_address(m['to'])}"
            f"{state}\t{esc(m['subject'])}{tags}{ack}{body}")


# ---------------------------------------------------------------- sending
@main.command()
@field_argument("send", "subject", "subject")
@click.argument("body", required=False, type=IdType("text"))
@field_option("send", "to", metavar="AGENT", help="Send to one agent (it need not be online: it gets it when it connects).")
@field_option("send", "group", help="Send to every live member of a group.")
@field_option("send", "capability", help="Send to every live agent with a capability.")
@click.option("--all", "all_", is_flag=True, help="Send to every live agent.")
@field_option("send", "priority", default="normal", show_default=True, help="Delivery lane.")
@field_option("send", "tags", "--tag", "tags", metavar="TAG", help="A tag to read by; repeatable.")
@click.option("--ack", "requires_ack", is_flag=True,
              help="Hold each delivery until it is acked (redelivered, then dead-lettered after --max-deliver).")
@field_option("send", "from", "--from", "sender", metavar="AGENT", help="Who sends it (where replies go).")
@field_option("send", "type", "--type", "type_", default="message", show_default=True, help="Free message type.")
@field_option("send", "category", default="general", show_default=True, help="Free category.")
@field_option("send", "context", metavar="JSON", help="A JSON object sent with it (inline, @FILE or -).")
@field_option("send", "body", "--json-body", "json_body", metavar="JSON",
              help="The body as a JSON value instead of BODY text (inline, @FILE or -).")
@field_option("send", "correlation_id", help="Ties a reply to its request.")
@field_option("send", "expires_in", metavar="SECONDS", help="Undelivered after this long, it expires.")
@field_option("send", "ack_wait", metavar="SECONDS", help="Seconds a delivery waits for its ack (default: the broker's).")
@field_option("send", "max_deliver", default=DEFAULT_MAX_DELIVER, show_default=True,
              help="Deliveries before an unacked message is a dead letter.")
@json_flag
@pass_ctx
def send(ctx: Ctx, subject: str, body: str | None, to: str | None, group: str | None, capability: str | None,
         all_: bool, priority: str, tags: tuple[str, ...], requires_ack: bool, sender: str | None, type_: str,
         category: str, context: Any, json_body: Any, correlation_id: str | None, expires_in: float | None,
         ack_wait: float | None, max_deliver: int) -> None:
    """Send SUBJECT (and BODY text) to --to AGENT, --group, --capability or --all (one of them).
    Prints the message id and how many live agents it was addressed to and reached at once."""
    if body is not None and json_body is not None:
        raise UsageError("give BODY or --json-body, not both", {"field": "body"})
    if context is not None and not isinstance(context, dict):
        raise UsageError("--context must be a JSON object", {"field": "context"})
    if sum(1 for given in (to, group, capability, all_) if given) != 1:
        raise UsageError("give exactly one address: --to AGENT, --group, --capability or --all", {"field": "to"})
    reply = ctx.client().send(subject, json_body if json_body is not None else body, to=to, group=group,
                              capability=capability, all=all_, priority=priority, tags=list(tags),
                              requires_ack=requires_ack, sender=sender, type=type_, category=category,
                              context=context, correlation_id=correlation_id, expires_in=expires_in,
                              ack_wait=ack_wait, max_deliver=max_deliver)
    emit(ctx, reply, lambda d: f"{d['id']}: addressed to {d['addressed']} agent(s), {d['online']} reached now, "
                               f"{d['queued']} waiting for their agent")


@main.command()
@field_argument("assign", "agent", "agent")
@field_argument("assign", "task", "task")
@field_option("assign", "ttl", metavar="SECONDS", help="Claim TTL in seconds (default: the agent's lease).")
@click.option("--queue", is_flag=True, help="If the agent is not connected, leave it in its inbox (the task "
                                            "is claimed when it is delivered, never held meanwhile).")
@field_option("assign", "priority", default="high", show_default=True, help="Delivery lane.")
@json_flag
@pass_ctx
def assign(ctx: Ctx, agent: str, task: str, ttl: float | None, queue: bool, priority: str) -> None:
    """Give TASK to AGENT: the broker claims it on the agent's lease and pushes it to the
    agent's task callback. Exit 1 if the agent is unknown, not connected (without --queue) or
    the task is not available."""
    def human(d: dict[str, Any]) -> str:
        if d["queued"]:
            return f"{esc(task)} waits in {esc(agent)}'s inbox as {d['id']} (claimed when delivered)"
        return f"{esc(task)} assigned to {esc(agent)} token={d['token']} ({d['id']})"
    emit(ctx, ctx.client().assign(agent, task, ttl=ttl, queue=queue, priority=priority), human)


# ---------------------------------------------------------------- reading
@main.command()
@field_option("message_list", "agent", help="Read this agent's inbox (marked read as it is printed).")
@field_option("message_list", "group", help="Messages sent to this group.")
@field_option("message_list", "tag", help="Only messages with this tag.")
@field_option("message_list", "priority", help="Only this priority.")
@click.option("--since", type=Since(), help="After message number SEQ, or since a time: 90s, 10m, 2h, "
                                           "1d ago or ISO 8601.")
@field_option("message_list", "tail", metavar="N", help="Only the last N matches.")
@click.option("--filter", "pattern", type=Pattern(), help="Only messages whose subject, body or sender match.")
@click.option("--unread", is_flag=True, help="Only messages the agent has not read (needs --agent).")
@click.option("--peek", is_flag=True, help="Change nothing: do not mark what is printed read.")
@field_option("message_list", "limit", default=1000, show_default=True, help="At most this many messages.")
@json_flag
@pass_ctx
def read(ctx: Ctx, agent: str | None, group: str | None, tag: str | None, priority: str | None,
         since: tuple[int, float | None] | None, tail: int | None, pattern: re.Pattern[str] | None, unread: bool,
         peek: bool, limit: int) -> None:
    """Stored messages, oldest first: an agent's inbox (with its delivery, read and ack state),
    a group's, or all. Reading never consumes: --agent marks what it printed read unless --peek."""
    since_n, since_ts = since or (0, None)
    regex = pattern
    if unread and agent is None:
        raise UsageError("--unread needs --agent (whose reading it is)", {"field": "unread"})
    client = ctx.client()
    found: list[Any] = []
    cursor = since_n
    while True:  # without --filter the broker applies every filter (and --tail) itself
        page = client.message_page(agent=agent, group=group, tag=tag, priority=priority, since=cursor,
                                   since_ts=since_ts, unread=unread, tail=None if regex else tail,
                                   limit=protocol.MAX_LIST_LIMIT if regex else limit)
        batch = page["messages"]
        if regex is not None:
            batch = [m for m in batch if regex.search(f"{m['subject']}\n{_text(m['body'])}\n{m['from'] or ''}")]
        found += batch
        cursor = page["last"]
        if regex is None or not page["more"] or (tail is None and len(found) >= limit):
            break
    found = found[-tail:] if tail else found[:limit]
    if agent is not None and not peek and found:
        client.mark_read([m["id"] for m in found], agent=agent)
    emit(ctx, {"messages": found}, lambda d: [_line(m) for m in d["messages"]] or ["no messages"])


@main.command()
@field_argument("ack", "id", "message_id")
@field_option("ack", "note", help="A note kept with the ack.")
@field_option("ack", "agent", required=False, help="The recipient acking (default: the message's only recipient).")
@field_option("ack", "token", help="The delivery's token: refused if the message was delivered again since.")
@json_flag
@pass_ctx
def ack(ctx: Ctx, message_id: str, note: str | None, agent: str | None, token: int | None) -> None:
    """Acknowledge a message as its recipient (with a note). Exit 1 if it is not that agent's
    or the token is stale."""
    client = ctx.client()
    if agent is None:
        recipients = [r["agent"] for r in client.message(message_id)["recipients"]]
        if len(recipients) != 1:
            raise UsageError(f"{esc(message_id)} has {len(recipients)} recipients: pass --agent", {"field": "agent"})
        agent = recipients[0]
    emit(ctx, client.ack(message_id, note=note, token=token, agent=agent),
         lambda d: f"{d['id']} acked by {esc(d['agent'])}" + (" (already)" if d["already"] else ""))


@main.command()
@field_option("unacked", "agent", help="Only this recipient.")
@field_option("unacked", "limit", default=1000, show_default=True, help="At most this many.")
@json_flag
@pass_ctx
def unacked(ctx: Ctx, agent: str | None, limit: int) -> None:
    """requires_ack deliveries not acked yet: delivered ones (token, seconds to the ack deadline)
    and pending ones (waiting for their agent)."""
    def human(d: dict[str, Any]) -> list[str]:
        return [f"{u['id']}\t{esc(u['agent'])}\t{u['state']}\tdeliveries={u['deliveries']}\ttoken={u['token'] or '-'}"
                f"\texpires_in={u['expires_in'] if u['expires_in'] is not None else '-'}\t{u['priority']}\t"
                f"{esc(u['subject'])}" for u in d["deliveries"]] or ["nothing awaits an ack"]
    emit(ctx, {"deliveries": ctx.client().unacked(agent=agent, limit=limit)}, human)


@main.command("dead-letters")
@field_option("dead_letters", "agent", help="Only this recipient.")
@click.option("--requeue", "requeue_id", metavar="ID", type=field_type(protocol.OPS["requeue"].by_name["id"]), help="Deliver this dead letter again (every dead "
                                                             "recipient of it, or --agent's).")
@field_option("dead_letters", "limit", default=1000, show_default=True, help="At most this many.")
@json_flag
@pass_ctx
def dead_letters(ctx: Ctx, agent: str | None, requeue_id: str | None, limit: int) -> None:
    """Deliveries that reached max_deliver without an ack; --requeue ID delivers one again
    from its first attempt. Exit 1 if ID is not a dead letter."""
    client = ctx.client()
    if requeue_id is not None:
        emit(ctx, client.requeue(requeue_id, agent=agent),
             lambda d: f"{d['id']} requeued for {esc(', '.join(d['requeued']))}")
        return
    emit(ctx, {"dead": client.dead_letters(agent=agent, limit=limit)},
         lambda d: [f"{x['id']}\t{esc(x['agent'])}\tdeliveries={x['deliveries']}\tdead={_when(x['dead_at'])}\t"
                    f"{x['priority']}\t{esc(x['from'] or '-')}\t{esc(x['subject'])}" for x in d["dead"]]
         or ["no dead letters"])


@main.command()
@json_flag
@pass_ctx
def msgstats(ctx: Ctx) -> None:
    """Queue depth per priority, outstanding acks, dead letters, messages stored, and the
    broker's delivery latency p50/p95 per priority (its last pushes)."""
    def human(d: dict[str, Any]) -> list[str]:
        lines = [f"messages stored: {d['messages']} (retention {d['retention']} per address, "
                 f"oldest {_when(d['oldest'])})",
                 f"awaiting ack: {d['outstanding']}   dead letters: {d['dead']}"]
        for p in protocol.PRIORITIES:
            lat = d.get("latency_ms", {}).get(p, {})
            p50, p95 = (lat.get(q) for q in ("p50", "p95"))
            lines.append(f"{p:9} pending={d['pending'][p]:<6} delivery "
                         + (f"p50={p50} ms p95={p95} ms" if p50 is not None else "p50=- p95=-")
                         + f" (n={lat.get('n', 0)})")
        return lines
    emit(ctx, ctx.client().msgstats(), human)


@main.group()
@json_flag
def group() -> None:
    """Join and leave groups (messages to a group reach its live members)."""


@group.command("join")
@field_argument("group_join", "group", "name")
@field_option("group_join", "agent", help="The agent joining.")
@json_flag
@pass_ctx
def group_join(ctx: Ctx, name: str, agent: str) -> None:
    """Add AGENT to group NAME. Exit 1 if the agent has no live lease."""
    emit(ctx, ctx.client().join(name, agent=agent), lambda d: f"{esc(d['agent'])} groups: {esc(', '.join(d['groups']))}")


@group.command("leave")
@field_argument("group_leave", "group", "name")
@field_option("group_leave", "agent", help="The agent leaving.")
@json_flag
@pass_ctx
def group_leave(ctx: Ctx, name: str, agent: str) -> None:
    """Take AGENT out of group NAME."""
    emit(ctx, ctx.client().leave(name, agent=agent),
         lambda d: f"{esc(d['agent'])} groups: {esc(', '.join(d['groups'])) or '(none)'}")
