"""``zmesh hook stop`` and ``zmesh hook prompt``: coding-agent hooks (Claude Code's contract:
the event as JSON on stdin, the answer as JSON on stdout, exit 0).

Rules these keep:

* A hook never holds its agent up for long, and never fails it. Every broker call has a
  short timeout (``--timeout``, default 1 s). A broker that does not answer, a bad or empty
  payload, or any zmesh error is one line on stderr, no answer, and exit 0: the agent goes
  on as if there were no hook.
* ``hook stop`` (the Stop event): when a task is claimable for the agent, it claims the task
  and answers ``{"decision": "block", "reason": ...}``. The reason names the task and its
  token, and the command that completes it, so the agent works on instead of going idle.
  Nothing claimable: no answer, and the agent stops.
* It counts the blocks of one session in a row (a state file per session): the payload's
  ``stop_hook_active`` says the stop came after a block. Claude Code ends a turn after 8
  blocks in a row, so the hook lets the stop through at its own cap (``--max-blocks``,
  default 7) rather than meet that one. A stop with ``stop_hook_active`` false starts the
  count again.
* ``hook prompt`` (UserPromptSubmit): unread messages of the priorities given (default
  critical and high) become ``additionalContext`` for the prompt, and are marked read.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from .. import protocol
from ..client import Client
from ..errors import ZmeshError
from . import main
from ._options import Seconds, field_option
from ._output import Ctx, pass_ctx

#: largest hook payload read from stdin (Claude Code sends a few hundred bytes)
MAX_PAYLOAD_BYTES = 1 << 20
#: blocks in a row Claude Code allows before it ends the turn itself
CLAUDE_CODE_BLOCK_CAP = 8


def _payload() -> dict[str, Any]:
    raw = sys.stdin.buffer.read(MAX_PAYLOAD_BYTES + 1)
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"hook payload above {MAX_PAYLOAD_BYTES} bytes")
    body = orjson.loads(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise ValueError("hook payload is not a JSON object")
    return body


def _state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "zmesh" / "hooks"


def _blocks_file(session: str) -> Path:
    return _state_dir() / (hashlib.sha256(session.encode()).hexdigest()[:32] + ".blocks")


def _note(message: str) -> None:
    click.echo(f"zmesh hook: {message}", err=True)


def _client(ctx: Ctx, timeout: float) -> Client:
    return Client(ctx.endpoint(), timeout=timeout, heartbeat=False)


@main.group()
def hook() -> None:
    """Hooks for coding agents (Claude Code's contract: JSON on stdin and stdout, exit 0)."""


@hook.command("stop")
@field_option("claim_next", "agent", help="The agent the session works as.")
@field_option("claim_next", "ttl", help="TTL of the claim taken (default: the agent's lease).")
@click.option("--max-blocks", type=click.IntRange(1, CLAUDE_CODE_BLOCK_CAP - 1), default=CLAUDE_CODE_BLOCK_CAP - 1,
              show_default=True, help="Blocks in a row before a stop is let through (Claude Code ends a turn "
              f"after {CLAUDE_CODE_BLOCK_CAP}).")
@click.option("--timeout", "timeout_s", type=Seconds(0.05, 10.0), default=1.0, show_default=True,
              help="Seconds to wait for the broker; past them the stop goes through.")
@pass_ctx
def hook_stop(ctx: Ctx, agent: str, ttl: float | None, max_blocks: int, timeout_s: float) -> None:
    """The Stop hook: claim the next task for AGENT and keep the session working on it
    ({"decision": "block", "reason": ...}); nothing to claim, or the broker away: let it stop."""
    try:
        payload = _payload()
    except ValueError as exc:
        _note(f"{exc}; letting the stop through")
        return
    session = str(payload.get("session_id") or "default")
    counter = _blocks_file(session)
    blocks = 0
    if payload.get("stop_hook_active") is True:
        try:
            blocks = int(counter.read_text() or 0)
        except (OSError, ValueError):
            blocks = 0
    if blocks >= max_blocks:
        _note(f"{blocks} blocks in a row for this session; letting the stop through")
        counter.unlink(missing_ok=True)
        return
    client = _client(ctx, timeout_s)
    try:
        claim = client.claim_next(agent=agent, ttl=ttl)
    except ZmeshError as exc:
        _note(f"{exc.message}; letting the stop through")
        return
    finally:
        client.close()
    if claim is None:
        counter.unlink(missing_ok=True)
        return
    counter.parent.mkdir(parents=True, exist_ok=True)
    counter.write_text(str(blocks + 1))
    task: Any = claim.task or {}
    data = "" if task.get("data") is None else " Data: " + orjson.dumps(task["data"]).decode()[:2000]
    reason = (f"zmesh: task '{claim.task_id}' is claimed for you (agent {agent}, token {claim.token}).{data} "
              f"Work on it now; when it is done run `zmesh task done {claim.task_id} --agent {agent} --token "
              f"{claim.token}` (or `zmesh task fail ... --error WHY`).")
    click.echo(orjson.dumps({"decision": "block", "reason": reason}).decode())


@hook.command("prompt")
@field_option("message_list", "agent", help="The agent the session works as.")
@click.option("--priority", "priorities", type=click.Choice(protocol.PRIORITIES), multiple=True,
              help="Priorities to inject; repeatable (default: critical and high).")
@click.option("--timeout", "timeout_s", type=Seconds(0.05, 10.0), default=1.0, show_default=True,
              help="Seconds to wait for the broker; past them the prompt goes on without messages.")
@pass_ctx
def hook_prompt(ctx: Ctx, agent: str, priorities: tuple[str, ...], timeout_s: float) -> None:
    """The UserPromptSubmit hook: AGENT's unread urgent messages as additional context for
    the prompt (then marked read)."""
    try:
        _payload()
    except ValueError as exc:
        _note(f"{exc}; the prompt goes on without messages")
        return
    wanted = set(priorities or ("critical", "high"))
    client = _client(ctx, timeout_s)
    try:
        found = [m for m in client.messages(agent=agent, unread=True) if m["priority"] in wanted]
        if found:
            client.mark_read([m["id"] for m in found], agent=agent)
    except ZmeshError as exc:
        _note(f"{exc.message}; the prompt goes on without messages")
        return
    finally:
        client.close()
    if not found:
        return
    lines = [f"zmesh: {len(found)} unread message(s) for agent {agent}:"]
    for m in found:
        body = "" if m["body"] is None else ": " + (m["body"] if isinstance(m["body"], str)
                                                    else orjson.dumps(m["body"]).decode())[:2000]
        lines.append(f"- [{m['priority']}] {m['id']} from {m['from'] or '-'}: {m['subject']}{body}")
    click.echo(orjson.dumps({"hookSpecificOutput": {"hookEventName": "UserPromptSubmit",
                                                    "additionalContext": "\n".join(lines)}}).decode())
