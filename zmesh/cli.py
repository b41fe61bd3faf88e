"""The ``zmesh`` command. Commands only call the client and format its answers; errors
become one line on stderr and an exit code: 0 ok, 1 refused or lost (not found, conflict,
not owner, stale token), 2 usage or invalid input, 3 broker unreachable."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import click
import orjson

from . import __version__, protocol
from .client import Client
from .config import DEFAULT_TIMEOUT_S, BrokerConfig, ConfigError, default_broker
from .errors import ZmeshError, exit_code


@dataclass
class Ctx:
    broker: str | None
    discover: bool
    json: bool
    timeout: float
    _client: Client | None = field(default=None, repr=False)

    def client(self) -> Client:
        if self._client is None:
            endpoint = self.broker or (None if self.discover else default_broker())
            self._client = Client(endpoint, timeout=self.timeout, heartbeat=False)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


pass_ctx = click.make_pass_decorator(Ctx)


def _json_flag(f: Callable[..., Any]) -> Callable[..., Any]:
    """--json on every command that prints data (also accepted before the command)."""
    def cb(ctx: click.Context, _p: click.Parameter, value: bool) -> bool:
        if value:
            ctx.find_object(Ctx).json = True  # type: ignore[union-attr]
        return value
    return click.option("--json", "json_", is_flag=True, expose_value=False, callback=cb,
                        help="Print JSON.")(f)


def _parse_json(_ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}") from None


def _emit(ctx: Ctx, data: Any, human: Callable[[Any], Iterable[str] | str]) -> None:
    if ctx.json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    out = human(data)
    for line in [out] if isinstance(out, str) else out:
        click.echo(line)


class _Group(click.Group):
    """Turns ZmeshError into one line and the exit code (the single place that does)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ZmeshError as exc:
            click.echo(f"zmesh: {exc}", err=True)
            ctx.exit(exit_code(exc))
        finally:
            obj = ctx.find_object(Ctx)
            if obj is not None:
                obj.close()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--broker", envvar="ZMESH_BROKER", metavar="ENDPOINT",
              help="Broker endpoint (env ZMESH_BROKER; default tcp://127.0.0.1:7700).")
@click.option("--discover", is_flag=True, help="Find the broker on the LAN with zeroconf.")
@click.option("--json", "json_", is_flag=True, help="Print JSON.")
@click.option("--timeout", type=click.FloatRange(0.1, 3600), default=DEFAULT_TIMEOUT_S,
              show_default=True, help="Seconds to wait for the broker.")
@click.option("-v", "--verbose", count=True, help="More logging (-vv: debug).")
@click.version_option(__version__, prog_name="zmesh")
@click.pass_context
def main(ctx: click.Context, broker: str | None, discover: bool, json_: bool, timeout: float,
         verbose: int) -> None:
    """zmesh: real-time coordination for agents (lease broker, task claims, events)."""
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = Ctx(broker, discover, json_, timeout)


# ---------------------------------------------------------------- broker
@main.command()
@click.option("--data", metavar="DIR", help="Data directory (env ZMESH_DATA; default ~/.local/share/zmesh).")
@click.option("--bind", multiple=True, metavar="ENDPOINT", help="ROUTER endpoint; repeatable (default tcp://*:7700).")
@click.option("--pub-bind", multiple=True, metavar="ENDPOINT", help="PUB endpoint; repeatable (default tcp://*:7701).")
@click.option("--no-ipc", is_flag=True, default=None, help="Do not also bind ipc:// endpoints in the data directory.")
@click.option("--no-discovery", is_flag=True, default=None, help="Do not advertise on the LAN (zeroconf).")
@click.option("--durability", type=click.Choice(["full", "fast", "none"]), help="Sync level (default full).")
@click.option("--ttl", type=click.FloatRange(0.1, 7 * 24 * 3600), help="Default lease TTL in seconds (default 30).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file (env ZMESH_CONFIG).")
def broker(data: str | None, bind: tuple[str, ...], pub_bind: tuple[str, ...], no_ipc: bool | None,
           no_discovery: bool | None, durability: str | None, ttl: float | None,
           config_path: str | None) -> None:
    """Run the lease broker until SIGINT/SIGTERM."""
    from .broker import Broker, tune_gc

    logging.getLogger("zmesh").setLevel(min(logging.getLogger().level, logging.INFO))
    try:
        config = BrokerConfig.load(
            config_path, data=data, bind=list(bind), pub_bind=list(pub_bind),
            ipc=None if no_ipc is None else not no_ipc,
            discovery=None if no_discovery is None else not no_discovery,
            durability=durability, default_ttl=ttl)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        server = Broker(config)
        server.bind()
    except OSError as exc:
        click.echo(f"zmesh: {exc}", err=True)
        sys.exit(1)
    tune_gc()
    server.serve()


# ---------------------------------------------------------------- tasks
@main.group()
def task() -> None:
    """Create, claim and settle tasks."""


def _task_line(t: dict[str, Any]) -> str:
    owner = f" owner={t['owner']} token={t['token']}" if t.get("owner") else ""
    return f"{t['id']}\t{t['status']}\tprio={t['priority']}\tattempts={t['attempts']}{owner}"


def _task_lines(t: dict[str, Any]) -> list[str]:
    lines = [_task_line(t), f"  type={t['type']} requires={','.join(t['requires']) or '-'} "
             f"depends_on={','.join(t['depends_on']) or '-'} max_attempts={t['max_attempts']}"]
    if t.get("data") is not None:
        lines.append(f"  data={orjson.dumps(t['data']).decode()}")
    if t.get("result") is not None:
        lines.append(f"  result={orjson.dumps(t['result']).decode()}")
    lines += [f"  {h['event']} by {h.get('agent')}: {h.get('error', '')}".rstrip(": ") for h in t["history"]]
    return lines


@task.command("add")
@click.argument("task_id")
@click.option("--type", "type_", default="task", show_default=True)
@click.option("--data", callback=_parse_json, help="JSON value.")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher is claimed first.")
@click.option("--requires", multiple=True, metavar="CAP", help="Capability an agent needs; repeatable.")
@click.option("--max-attempts", type=click.IntRange(1), default=3, show_default=True)
@click.option("--depends-on", multiple=True, metavar="ID", help="Task that must complete first; repeatable.")
@_json_flag
@pass_ctx
def task_add(ctx: Ctx, task_id: str, type_: str, data: Any, priority: int, requires: tuple[str, ...],
             max_attempts: int, depends_on: tuple[str, ...]) -> None:
    """Create a task."""
    t = ctx.client().create_task(task_id, type=type_, data=data, priority=priority, requires=requires,
                                 max_attempts=max_attempts, depends_on=depends_on)
    _emit(ctx, t, _task_line)


def _claim_out(ctx: Ctx, claim: Any) -> None:
    data = {"task": claim.task_id, "token": claim.token, "agent": claim.agent,
            "lease": claim.lease, "expires_at": claim.expires_at}
    _emit(ctx, data, lambda d: str(d["token"]))


@task.command("claim")
@click.argument("task_id")
@click.option("--agent", required=True, help="Agent name the claim is held by.")
@click.option("--ttl", type=click.FloatRange(0.1, 7 * 24 * 3600), help="Claim TTL in seconds.")
@_json_flag
@pass_ctx
def task_claim(ctx: Ctx, task_id: str, agent: str, ttl: float | None) -> None:
    """Claim a task by id; prints the fencing token. Exit 1 if another agent holds it."""
    _claim_out(ctx, ctx.client().try_claim(task_id, agent=agent, ttl=ttl))


@task.command("next")
@click.option("--agent", required=True)
@click.option("--capability", multiple=True, metavar="CAP", help="Capability of the agent; repeatable.")
@click.option("--ttl", type=click.FloatRange(0.1, 7 * 24 * 3600), help="Claim TTL in seconds.")
@_json_flag
@pass_ctx
def task_next(ctx: Ctx, agent: str, capability: tuple[str, ...], ttl: float | None) -> None:
    """Claim the best available task the capabilities cover. Exit 1 if there is none."""
    claim = ctx.client().claim_next(agent=agent, capabilities=capability, ttl=ttl)
    if claim is None:
        if ctx.json:
            click.echo("null")
        else:
            click.echo("zmesh: no available task matches", err=True)
        sys.exit(1)
    data = {"task": claim.task_id, "token": claim.token, "agent": claim.agent,
            "lease": claim.lease, "expires_at": claim.expires_at, "record": claim.task}
    _emit(ctx, data, lambda d: f"{d['task']} {d['token']}")


_token = click.option("--token", type=click.IntRange(1), help="Fencing token from claim (refused if stale).")


@task.command("done")
@click.argument("task_id")
@click.option("--agent", required=True)
@_token
@click.option("--result", callback=_parse_json, help="JSON value.")
@_json_flag
@pass_ctx
def task_done(ctx: Ctx, task_id: str, agent: str, token: int | None, result: Any) -> None:
    """Complete a claimed task."""
    _emit(ctx, ctx.client().complete(task_id, agent=agent, token=token, result=result), _task_line)


@task.command("fail")
@click.argument("task_id")
@click.option("--agent", required=True)
@_token
@click.option("--error", required=True, help="What went wrong.")
@_json_flag
@pass_ctx
def task_fail(ctx: Ctx, task_id: str, agent: str, token: int | None, error: str) -> None:
    """Record a failed attempt (the task goes back to the pool, or dead)."""
    _emit(ctx, ctx.client().fail(task_id, agent=agent, token=token, error=error), _task_line)


@task.command("release")
@click.argument("task_id")
@click.option("--agent", required=True)
@_token
@_json_flag
@pass_ctx
def task_release(ctx: Ctx, task_id: str, agent: str, token: int | None) -> None:
    """Give a claimed task back to the pool."""
    _emit(ctx, ctx.client().release(task_id, agent=agent, token=token), _task_line)


@task.command("show")
@click.argument("task_id")
@_json_flag
@pass_ctx
def task_show(ctx: Ctx, task_id: str) -> None:
    """One task with its owner, token and history."""
    _emit(ctx, ctx.client().task(task_id), _task_lines)


@task.command("ls")
@click.option("--status", type=click.Choice(["waiting", "available", "claimed", "completed", "dead"]))
@click.option("--limit", type=click.IntRange(1, 10_000), default=1000, show_default=True)
@_json_flag
@pass_ctx
def task_ls(ctx: Ctx, status: str | None, limit: int) -> None:
    """List tasks in id order."""
    _emit(ctx, ctx.client().tasks(status=status, limit=limit), lambda ts: [_task_line(t) for t in ts])


# ---------------------------------------------------------------- status and events
@main.command()
@_json_flag
@pass_ctx
def status(ctx: Ctx) -> None:
    """Broker summary: tasks by status, agents, claims, event sequence."""
    c = ctx.client()
    data = c.status()
    data["agent_list"] = c.agents()

    def human(d: dict[str, Any]) -> list[str]:
        counts = " ".join(f"{k}={v}" for k, v in d["tasks"].items())
        lines = [f"broker {d['broker_id']} v{d['version']} durability={d['durability']} "
                 f"uptime={d['uptime']:.0f}s seq={d['seq']}",
                 f"tasks: {counts}", f"agents: {d['agents']}  claims: {d['claims']}"]
        lines += [f"  {a['id']}\tlease={a['lease']}\texpires_in={a['expires_in']}\t"
                  f"caps={','.join(a['capabilities']) or '-'}\tcompleted={a['completed']}"
                  for a in d["agent_list"]]
        return lines
    _emit(ctx, data, human)


@main.command()
@click.argument("topic")
@click.option("--data", callback=_parse_json, help="JSON value to send (default null).")
@click.option("--agent", help="Sender name shown to subscribers.")
@_json_flag
@pass_ctx
def publish(ctx: Ctx, topic: str, data: Any, agent: str | None) -> None:
    """Broadcast a message to every subscriber (event msg.TOPIC, kept in the event log)."""
    seq = ctx.client().publish(topic, data, agent=agent)
    _emit(ctx, {"topic": protocol.MESSAGE_PREFIX + topic, "seq": seq}, lambda d: f"published {d['topic']} seq={d['seq']}")


@main.command()
@click.option("--topic", multiple=True, help="Topic prefix to follow (task., agent., msg.); repeatable.")
@click.option("--since", type=click.IntRange(0), help="Replay events after this sequence first.")
@click.option("--count", type=click.IntRange(1), help="Stop after this many events.")
@click.option("--idle-timeout", type=click.FloatRange(0.1), help="Stop after this many quiet seconds.")
@_json_flag
@pass_ctx
def events(ctx: Ctx, topic: tuple[str, ...], since: int | None, count: int | None,
           idle_timeout: float | None) -> None:
    """Follow the event stream (one line per event)."""
    seen = 0
    for ev in ctx.client().events(topic, since=since, timeout=idle_timeout):
        if ctx.json:
            click.echo(orjson.dumps(ev.to_json()).decode())
        else:
            click.echo(f"{ev.seq}\t{ev.topic}\t{orjson.dumps(ev.body).decode()}")
        sys.stdout.flush()
        seen += 1
        if count is not None and seen >= count:
            return


if __name__ == "__main__":  # pragma: no cover
    main()
