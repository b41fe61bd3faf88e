"""``zmesh audit``: read the broker's audit trail (docs/AUDIT.md).

Rules: the filters are the audit op's fields (``--op`` takes exactly the op names,
``--result`` ``ok``, ``waiting`` or an error code); ``--since`` takes a duration ago or an
ISO 8601 time. The command pages through the trail (the client's ``audit``: each request
examines a bounded part of it) until ``--limit`` records match or the trail is exhausted,
and prints them oldest first, one escaped line each. With security on it needs an observer
or admin key (an agent key is refused: exit 1, ``forbidden``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from .. import protocol
from ..protocol.ops.audit import DEFAULT_AUDIT_LIMIT
from . import main
from ._options import SinceTime, field_option
from ._output import Ctx, emit, esc, json_flag, pass_ctx


def _line(record: dict[str, Any]) -> str:
    when = dt.datetime.fromtimestamp(record["ts"]).isoformat(timespec="milliseconds")
    return (f"{when}  {record['op']}  agent={esc(record['agent'] or '-')}  task={esc(record['task'] or '-')}  "
            f"{record['result']}  seq={record['seq']}  key={record['key'] or '-'}")


@main.command("audit")
@field_option("audit", "agent", help="Only what this agent did.")
@field_option("audit", "task", help="Only operations naming this task.")
@field_option("audit", "op", metavar="OP", help="Only this op (any op name of the protocol).")
@field_option("audit", "result", metavar="RESULT", help="Only this result: ok, waiting (a reserve queued) or an "
              "error code (forbidden, conflict, not_owner...).")
@click.option("--since", type=SinceTime(), help="Only records since then: a duration ago (90s, 10m, 2h, 7d) or "
              "an ISO 8601 time.")
@click.option("--limit", type=click.IntRange(1, protocol.MAX_INT), default=DEFAULT_AUDIT_LIMIT, show_default=True,
              metavar="N", help="At most N records: the newest that match.")
@json_flag
@pass_ctx
def audit(ctx: Ctx, agent: str | None, task: str | None, op: str | None, result: str | None,
          since: float | None, limit: int) -> None:
    """The broker's audit trail: who did what, when, with what result (and the event seq and
    key fingerprint), oldest first among the newest --limit records that match. What is
    recorded is the broker's `audit` setting (default: every write and every refusal)."""
    records = ctx.client().audit(agent=agent, task=task, op=op, result=result, since=since, limit=limit)
    records.reverse()
    emit(ctx, {"records": records}, lambda d: [_line(r) for r in d["records"]])
