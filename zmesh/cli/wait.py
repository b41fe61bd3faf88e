"""``zmesh wait``: a shell agent blocks until there is work for it, with no polling loop.

Rules: the command is the agent while it runs. It registers AGENT from its own connection,
with the capabilities given, so pushes reach it. It heartbeats and reports itself idle,
then waits on two streams at once:
- the broker's task events (a task created, made available, released or failed may be
  claimable);
- the messages pushed to the agent.
It answers with the first of these:
- ``{kind: "task"}``: a task it may do. With ``--claim`` the task is claimed, and the
  reply carries the claim. A task assigned to the agent (``zmesh assign``) arrives claimed
  either way.
- ``{kind: "message"}``: a message pushed to it.
- ``{kind: "timeout"}``: nothing came within ``--timeout``. This is a normal result
  (exit 0), like the other two: scripts read ``kind``.
A claim taken just before an interruption is released, so a cancelled wait leaves no
claim behind. On exit the agent does not unregister: a claim it returned stays on its
lease, which lapses after ``--ttl`` unless the agent renews it (``zmesh task renew``, or any
report).
"""

from __future__ import annotations

from typing import Any

import click

from .. import protocol
from ..errors import ZmeshError
from ..recipes import Work, WorkWaiter
from . import main
from ._options import Seconds, field_option
from ._output import Ctx, emit, esc, json_flag, pass_ctx
from .tasks import claim_json


def _answer(work: Work, wait_s: float) -> dict[str, Any]:
    """The command's JSON answer for what the wait found."""
    if work.kind == "timeout":
        return {"kind": "timeout", "waited": wait_s}
    if work.kind == "message":
        return {"kind": "message", "message": work.message.to_json()}
    return {"kind": "task", "task": work.task_id, "claimed": work.claimed,
            "claim": claim_json(work.claim) if work.claim is not None else None, "record": work.record}


@main.command()
@field_option("claim_next", "agent", help="The agent waiting (registered from this command's connection).")
@field_option("register", "capabilities", "--capability", "capability", metavar="CAP",
              help="A capability of the agent; repeatable (tasks that require others are not its work).")
@click.option("--claim", is_flag=True, help="Claim the task found (the reply carries the claim).")
@click.option("--timeout", "wait_s", type=Seconds(0.0, protocol.MAX_WAIT_S), default=60.0, show_default=True,
              help="Seconds to wait before answering {kind: timeout}.")
@field_option("register", "ttl", metavar="SECONDS", help="The agent's lease TTL (its claims lapse this long "
              "after the command exits unless renewed; default: the broker's).")
@json_flag
@pass_ctx
def wait(ctx: Ctx, agent: str, capability: tuple[str, ...], claim: bool, wait_s: float, ttl: float | None) -> None:
    """Wait until there is work for AGENT: a task it may do (claimed with --claim), a task
    assigned to it, or a message pushed to it; or --timeout. Prints {kind: task|message|timeout,
    ...}. Event-driven: no polling of the broker while it waits."""
    caps = sorted(set(capability))
    client = ctx.agent_client(agent, caps, ttl)
    work: Work | None = None
    # no fallback poll: the wait is the task events and the pushes (zmesh/recipes/work.py)
    with WorkWaiter(client, capabilities=caps, poll=None) as waiter:
        try:
            work = waiter.wait(wait_s, claim=claim, ttl=ttl)
            emit(ctx, _answer(work, wait_s), _human)
            work = None  # delivered: nothing to undo
        finally:
            if work is not None and work.claim is not None:  # interrupted after a claim (or an assignment)
                try:
                    client.release(work.task_id or "", token=work.token, agent=agent)
                except ZmeshError:
                    pass  # it lapses with the lease


def _human(d: dict[str, Any]) -> str:
    if d["kind"] == "timeout":
        return f"nothing within {d['waited']:g} s"
    if d["kind"] == "message":
        m = d["message"]
        return f"message {m['id']} from {esc(m.get('from') or '-')}: {esc(m['subject'])}"
    claimed = f" (claimed, token {d['claim']['token']})" if d["claimed"] else ""
    return f"task {esc(d['task'])}{claimed}"
