"""What the CLI prints, in one place: data on stdout (text or ``--json``), errors on stderr
as one line (``zmesh: CODE: message``) or, with ``--json``, one JSON object
(``{"code", "message", "details"}``).

Rules: text output escapes control characters in anything that came from users (ids,
owners, errors, capabilities), so one record is one line whatever it holds; JSON output is
JSON (orjson escapes); an error is never more than one line and never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import click
import orjson

from ..client import Client
from ..config import default_broker
from ..protocol import escape_controls

def esc(value: Any) -> str:
    """``str(value)`` with control characters shown as escapes (\\n, \\t, \\x1b, \\u2028)."""
    return escape_controls(value if isinstance(value, str) else str(value))


@dataclass
class Ctx:
    """The command line's shared state: where the broker is, how to print."""

    broker: str | None
    discover: bool
    json: bool
    timeout: float
    _client: Client | None = field(default=None, repr=False)
    _agent: Client | None = field(default=None, repr=False)

    def endpoint(self) -> str | None:
        return self.broker or (None if self.discover else default_broker())

    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.endpoint(), timeout=self.timeout, heartbeat=False)
        return self._client

    def agent_client(self, agent: str, capabilities: list[str], ttl: float | None) -> Client:
        """A client that is the agent while the command runs: registered from this
        connection (pushes reach it) and heartbeating. On exit it does not unregister: what
        the agent holds stays on its lease, which lapses after its TTL unless renewed."""
        if self._agent is None:
            self._agent = Client(self.endpoint(), agent=agent, capabilities=capabilities, ttl=ttl,
                                 timeout=self.timeout)
        return self._agent

    def close(self) -> None:
        if self._agent is not None:
            self._agent.close(unregister=False)
            self._agent = None
        if self._client is not None:
            self._client.close()
            self._client = None


pass_ctx = click.make_pass_decorator(Ctx)
#: ctx.meta key: --json was given (at any level)
JSON_META = "zmesh.json"


def json_flag(f: Callable[..., Any]) -> Callable[..., Any]:
    """--json on every command and group that prints data (also accepted before it)."""
    def cb(ctx: click.Context, _p: click.Parameter, value: bool) -> bool:
        if value:
            ctx.meta[JSON_META] = True  # shared by the whole context chain
            obj = ctx.find_object(Ctx)
            if obj is not None:
                obj.json = True
        return value
    return click.option("--json", "json_", is_flag=True, expose_value=False, callback=cb,
                        is_eager=True, help="Print JSON (errors too: one object on stderr).")(f)


def emit(ctx: Ctx, data: Any, human: Callable[[Any], Iterable[str] | str]) -> None:
    if ctx.json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    out = human(data)
    for line in [out] if isinstance(out, str) else out:
        click.echo(line)


def note(ctx: Ctx, message: str) -> None:
    """A remark on stderr that is not an error (text mode only: JSON carries it as data)."""
    if not ctx.json:
        click.echo(f"zmesh: {message}", err=True)


def error(code: str, message: str, details: dict[str, Any] | None, as_json: bool) -> None:
    """Print one error: one line, or one JSON object with --json."""
    if as_json:
        click.echo(orjson.dumps({"code": code, "message": message, "details": details or {}},
                                default=str).decode(), err=True)
    else:
        click.echo(f"zmesh: {code}: {esc(message)}", err=True)
