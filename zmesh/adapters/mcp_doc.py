"""docs/MCP.md, rendered from the MCP server's own tool list (names, descriptions, input and
output schemas), so the documented contract is the served one (``python docs/gen_mcp.py``;
a test checks the file is current)."""

from __future__ import annotations

import asyncio
from typing import Any

from .mcp import (
    CHANNEL_METHOD,
    CHANNEL_PRIORITIES,
    DEFAULT_WAIT_MAX_S,
    HELD_BY_ME,
    INSTRUCTIONS,
    NEXT,
    TOOLS,
    build_server,
)
from .session import PROGRESS_EVERY_S, AgentSession

INTRO = f"""# zmesh MCP server

Generated from the server's own tool list by `python docs/gen_mcp.py`: do not edit by hand.

`zmesh mcp` serves the Model Context Protocol over stdin/stdout (the official MCP Python SDK,
`pip install 'zmesh[mcp]'`). One process is one agent on the mesh:
- it registers the agent (`--agent`, else `$ZMESH_AGENT`, else host:working-directory)
  and keeps its lease alive;
- it holds the agent's fencing and delivery tokens itself: the model passes task ids and
  message ids only;
- when stdin closes, it unregisters the agent, so the agent's claims and reservations go
  back at once, and exits.

stdout carries protocol only; logs go to stderr (`-v` for INFO).

The server's instructions to the model:

> {INSTRUCTIONS}

## Waiting

- `wait_for_work` waits at most `--wait-max` seconds, {DEFAULT_WAIT_MAX_S:g} by default. A
  timeout is a normal result: call it again.
  - The default is short because a call that says nothing for about 30 s may be cut: by a
    proxy, or by a client of the stateless revision (2026-07-28), which re-issues a call
    whose response stream broke. It also fits Codex CLI, which stops a tool call after
    `tool_timeout_sec` (60 s by default); progress does not extend that limit.
  - To wait longer, raise the client's timeout first, then `--wait-max` below it:
    - Gemini CLI: 10 min by default.
    - Claude Code: a call that sends nothing for 30 min is aborted (progress resets that
      clock), and a main-conversation call moves to the background after 2 min.
- The wait is event-driven. It wakes on the broker's task events and on pushes to the
  agent, never by polling the broker.
- Progress notifications go out every {PROGRESS_EVERY_S:g} s (`--progress-every`) when the
  client asked for them.
- The agent is shown `idle` while it waits, and `busy` after a claim.
- A cancelled call releases what it claimed.
- A lost answer loses nothing, and a re-issued call never claims a second task. Every task a
  wait hands out (claimed by it, or assigned) carries a `handle`. Until the agent completes,
  fails or releases that task, the next `wait_for_work` answers it again at once, with the
  same handle and `repeated: true`, after checking at the broker that the claim is still the
  agent's. `handle` as an argument asks for that one task again. When the server starts on
  a lease that still holds claims (the same agent's earlier process), it takes them over
  the same way: the first wait hands them out again.
- A message the wait answers with stays unread: `read_messages` returns it and marks it read.

## Errors

A failure is a tool error (`isError: true`). Its text is one line: the SDK's
`Error executing tool NAME: `, then `CODE: message -> what to do next`:

| code | what the model is told to do |
|---|---|
""" + "".join(f"| `{code}` | {hint} |\n" for code, hint in NEXT.items()) + f"""
A `conflict` about tasks the agent holds itself (set_status idle while holding one) says
instead: {HELD_BY_ME}.
Arguments that break a tool's input schema are refused by the SDK, naming the argument.

## Channels (`--channel`)

With `--channel` the server declares Claude Code's `claude/channel` capability. Assignments,
and messages of priority {" or ".join(CHANNEL_PRIORITIES)}, that arrive while no
`wait_for_work` is waiting are pushed into the session as `{CHANNEL_METHOD}`, with
`params: {{content, meta: {{kind, task | id, priority, sender}}}}`. They count as seen: a
later wait does not answer them again. Without the flag, nothing is pushed. Pushes need a
client that connected with the initialize handshake (revisions up to 2025-11-25); a client of
the stateless revision (2026-07-28) sends no `notifications/initialized` and gets none.

## Tools
"""


def _type(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        kinds = [_type(s) for s in schema["anyOf"] if s.get("type") != "null"]
        return " or ".join(kinds) + " or null"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    kind = schema.get("type")
    if kind is None:
        return "any JSON"
    if kind == "array":
        text = f"array of {_type(schema.get('items') or {})}"
        if "maxItems" in schema:
            text += f" (at most {schema['maxItems']})"
        return text
    bounds = []
    if "minimum" in schema or "maximum" in schema:
        bounds.append(f"{schema.get('minimum', '')}..{schema.get('maximum', '')}")
    if "maxLength" in schema:
        bounds.append(f"{schema.get('minLength', 0)}..{schema['maxLength']} chars")
    return str(kind) + (f" ({', '.join(bounds)})" if bounds else "")


def _default(schema: dict[str, Any], required: bool) -> str:
    if required:
        return "required"
    if "default" not in schema:
        return ""
    value = schema["default"]
    return "null" if value is None else f"`{str(value).lower() if isinstance(value, bool) else value}`"


def _tool(tool: Any) -> str:
    out = [f"### `{tool.name}`\n", tool.description, ""]
    props = tool.input_schema.get("properties") or {}
    required = set(tool.input_schema.get("required") or ())
    if props:
        out += ["| argument | type | default | description |", "|---|---|---|---|"]
        for name, schema in props.items():
            desc = " ".join(str(schema.get("description", "")).split())
            out.append(f"| `{name}` | {_type(schema)} | {_default(schema, name in required)} | {desc} |")
    else:
        out.append("No arguments.")
    result = tool.output_schema or {}
    fields = ", ".join(f"`{k}`: {_type(v)}" for k, v in (result.get("properties") or {}).items())
    out += ["", f"Result: {{{fields}}}", ""]
    return "\n".join(out)


def _definitions(tools: list[Any]) -> str:
    seen: dict[str, dict[str, Any]] = {}
    for tool in tools:
        seen.update((tool.output_schema or {}).get("$defs") or {})
    out = ["## Result types\n"]
    for name in sorted(seen):
        fields = ", ".join(f"`{k}`: {_type(v)}" for k, v in (seen[name].get("properties") or {}).items())
        out.append(f"- **{name}**: {{{fields}}}")
    return "\n".join(out) + "\n"


def render_markdown() -> str:
    session = AgentSession("tcp://127.0.0.1:9", "doc")
    tools = asyncio.run(build_server(session).list_tools())
    assert tuple(t.name for t in tools) == TOOLS
    return INTRO + "\n" + "\n".join(_tool(t) for t in tools) + "\n" + _definitions(tools)
