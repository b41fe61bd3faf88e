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

import queue
import threading
import time
from typing import Any

import click

from .. import protocol
from ..client import Client
from ..client._api import WORK_EVENTS, first_claimable
from ..errors import Conflict, ZmeshError
from . import main
from ._options import Seconds, field_option
from ._output import Ctx, emit, esc, json_flag, pass_ctx
from .tasks import claim_json

def _claimable(client: Client, caps: set[str]) -> dict[str, Any] | None:
    return first_claimable(client.tasks(status="available", limit=protocol.MAX_LIST_LIMIT), caps)


def _work(client: Client, agent: str, caps: set[str], claim: bool, ttl: float | None) -> dict[str, Any] | None:
    if claim:
        got = client.claim_next(agent=agent, ttl=ttl)
        return None if got is None else {"kind": "task", "task": got.task_id, "claimed": True,
                                         "claim": claim_json(got), "record": got.task}
    task = _claimable(client, caps)
    return None if task is None else {"kind": "task", "task": task["id"], "claimed": False, "claim": None,
                                      "record": task}


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
    caps = set(capability)
    client = ctx.agent_client(agent, sorted(caps), ttl)
    found: queue.Queue[tuple[str, Any]] = queue.Queue()
    client.on_task(lambda m: found.put(("assigned", m)))
    client.on_message(lambda m: found.put(("message", m)))
    stop = threading.Event()
    since = client.hello()["seq"]  # every task event after this wakes the wait: none is missed

    def events() -> None:
        try:
            for ev in client.events(WORK_EVENTS, since=since, timeout=None):
                if stop.is_set():
                    return
                found.put(("event", ev.topic))
        except ZmeshError as exc:  # the broker went away for good: say so to the waiter
            found.put(("error", exc))

    threading.Thread(target=events, daemon=True, name="zmesh-wait-events").start()
    try:
        client.idle(message="waiting for work")
    except Conflict:  # it holds a task already (one assigned as it connected): busy, and it waits all the same
        pass
    deadline = time.monotonic() + wait_s
    answer: dict[str, Any] | None = None
    try:
        answer = _work(client, agent, caps, claim, ttl)  # what was there before `since`
        while answer is None:
            left = deadline - time.monotonic()
            if left <= 0:
                answer = {"kind": "timeout", "waited": wait_s}
                break
            try:
                what, item = found.get(timeout=left)
            except queue.Empty:
                continue
            if what == "error":
                raise item
            if what == "message":
                answer = {"kind": "message", "message": item.to_json()}
            elif what == "assigned":
                answer = {"kind": "task", "task": item.task, "claimed": True,
                          "claim": claim_json(item.claim), "record": item.context.get("task_record")}
            else:
                answer = _work(client, agent, caps, claim, ttl)
        emit(ctx, answer, _human)
        answer = None  # delivered: nothing to undo
    finally:
        stop.set()
        if answer is not None and answer.get("claimed") and answer["claim"]:  # interrupted after a claim
            try:
                client.release(answer["task"], token=answer["claim"]["token"], agent=agent)
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
