"""``zmesh status``, ``publish``, ``events`` and ``version``: what the mesh is doing.

Rules: ``events`` is an operator's live view: it rides through broker outages (reconnects
with backoff and says so on stderr) unless ``--no-reconnect``; each event is one line,
flushed at once; ``--since`` ahead of the broker's log is an error naming it.
"""

from __future__ import annotations

import sys
from typing import Any

import click
import orjson

from .. import __version__
from .. import protocol
from ..errors import Unreachable
from . import main
from ._options import Seconds, field_argument, field_option
from ._output import Ctx, emit, esc, json_flag, pass_ctx


@main.command()
@json_flag
@pass_ctx
def status(ctx: Ctx) -> None:
    """Broker summary: tasks by status, agents by state and liveness, the idle queue, claims,
    open blockers, event sequence (`zmesh agents` and `zmesh top` show the agents in full)."""
    c = ctx.client()
    data: dict[str, Any] = dict(c.status())
    data["agent_list"] = c.agents()

    def human(d: dict[str, Any]) -> list[str]:
        counts = " ".join(f"{k}={v}" for k, v in d["tasks"].items())
        states = " ".join(f"{k}={v}" for k, v in d["states"].items())
        lines = [f"broker {d['broker_id']} v{d['version']} durability={d['durability']} "
                 f"uptime={d['uptime']:.0f}s seq={d['seq']}",
                 f"tasks: {counts}",
                 f"agents: {d['agents']} ({states} evasive={d['evasive']})  claims: {d['claims']}  "
                 f"open blockers: {d['blockers']}",
                 "idle queue: " + (" ".join(esc(a) for a in d["idle_queue"]) or "(empty)")]
        lines += [f"  {esc(a['id'])}\t{a['state']}\t{a['liveness']}\tlease={a['lease']}\t"
                  f"expires_in={a['expires_in']}\tcaps={esc(','.join(a['capabilities'])) or '-'}\t"
                  f"completed={a['completed']}" for a in d["agent_list"]]
        return lines
    emit(ctx, data, human)


@main.command()
@field_argument("publish", "topic", "topic")
@field_option("publish", "data", help="JSON value to send (inline, @FILE, or - for stdin; default null).")
@field_option("publish", "agent", help="Sender name shown to subscribers as `from`.")
@json_flag
@pass_ctx
def publish(ctx: Ctx, topic: str, data: Any, agent: str | None) -> None:
    """Broadcast a message to every subscriber (event msg.TOPIC, kept in the event log)."""
    seq = ctx.client().publish(topic, data, agent=agent)
    emit(ctx, {"topic": protocol.MESSAGE_PREFIX + topic, "seq": seq},
         lambda d: f"published {d['topic']} seq={d['seq']}")


@main.command()
@field_option("replay", "topics", "--topic", "topic", metavar="PREFIX",
              help="Topic prefix to follow (task., agent., msg.); repeatable.")
@field_option("replay", "since", required=False, metavar="SEQ",
              help="Replay the events after this sequence number first.")
@click.option("--count", type=click.IntRange(1, protocol.MAX_INT), help="Stop after this many events.")
@click.option("--idle-timeout", type=Seconds(0.1, 86400.0),
              help="Stop after this many seconds without an event.")
@click.option("--no-reconnect", is_flag=True,
              help="Exit 3 when the broker is unreachable instead of waiting for it to come back.")
@json_flag
@pass_ctx
def events(ctx: Ctx, topic: tuple[str, ...], since: int | None, count: int | None,
           idle_timeout: float | None, no_reconnect: bool) -> None:
    """Follow the event stream, one line per event (seq, topic, JSON body). Survives broker
    restarts: missed events are replayed, none is lost or repeated."""
    seen = 0
    for ev in ctx.client().events(topic, since=since, timeout=idle_timeout, reconnect=not no_reconnect):
        if ctx.json:
            click.echo(orjson.dumps(ev.to_json()).decode())
        else:
            click.echo(f"{ev.seq}\t{esc(ev.topic)}\t{orjson.dumps(ev.body).decode()}")
        sys.stdout.flush()
        seen += 1
        if count is not None and seen >= count:
            return


@main.command()
@json_flag
@pass_ctx
def version(ctx: Ctx) -> None:
    """The client's version and the broker's (exit 3 if the broker does not answer)."""
    data: dict[str, Any] = {"client": __version__, "protocol": protocol.PROTOCOL_VERSION,
                            "broker": None, "broker_protocol": None, "broker_id": None}
    try:
        hello = ctx.client().hello()
    except Unreachable:
        emit(ctx, data, lambda d: f"client {d['client']} (protocol {d['protocol']})")
        raise
    data.update(broker=hello.get("version"), broker_protocol=hello.get("protocol"),
                broker_id=hello.get("broker_id"))
    emit(ctx, data, lambda d: [f"client {d['client']} (protocol {d['protocol']})",
                               f"broker {d['broker']} (protocol {d['broker_protocol']}, id {d['broker_id']})"])
