"""The ``zmesh`` command. Commands only call the client and format its answers.

Rules: every failure ends the same way, here and nowhere else: one line on stderr
(``zmesh: CODE: message``; with ``--json`` one JSON object ``{"code", "message",
"details"}``) and an exit code: 0 ok, 1 refused or lost (not found, conflict, not owner,
stale token, lapsed claim, nothing to claim), 2 usage or invalid input (bad option, bad
endpoint, bad configuration), 3 broker unreachable. Never a traceback: an unexpected
exception is a one-line ``internal`` error (exit 1) whose traceback goes to the log at -vv.
Logging handlers are set up here and only here; ``zmesh top`` alone moves them aside while its
live screen is shown (its warnings go to the dashboard's status line) and puts them back.

Command groups live in their own modules (tasks, agents, top, events, serve); options that become
request fields are built from the protocol's field table (``_options.field_option``).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Sequence

import click

from .. import __version__
from ..config import DEFAULT_TIMEOUT_S, env_meant, unknown_env
from ..discovery.mesh import ENV_MESH

from ..util.logs import JsonFormatter
from ..errors import UsageError, ZmeshError, exit_code
from ._options import EndpointType, MeshName, Seconds
from ._output import JSON_META, Ctx, error, json_flag

log = logging.getLogger("zmesh.cli")
#: ctx.meta key: the ZMESH_MESH value --mesh replaced (restored when the command ends)
_MESH_META = "zmesh.mesh_before"

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
#: what each exit code means (README's table is tested against this)
EXIT_CODES = {
    EXIT_OK: "ok",
    EXIT_REFUSED: "refused or lost: not found, conflict, not owner, forbidden, stale token, lapsed claim, "
                  "nothing to claim; a degraded broker (`zmesh health`)",
    EXIT_USAGE: "usage or invalid input: bad option or value, bad endpoint, bad configuration",
    EXIT_UNREACHABLE: "broker unreachable (no answer within --timeout)",
}


def _wants_json(args: Sequence[str]) -> bool:
    """--json anywhere before ``--`` (a usage error may come before its callback ran)."""
    args = list(args)
    return "--json" in (args[:args.index("--")] if "--" in args else args)


class _Root(click.Group):
    """The root group: turns every failure into one line and an exit code, and closes the
    shared client when the command ends, whatever happened."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        as_json = _wants_json(argv)
        try:
            # non-standalone: click raises instead of printing; --help/--version return 0
            rv = super().main(argv, prog_name or "zmesh", complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else EXIT_OK
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except click.exceptions.Abort:
            code = 130
            error("interrupted", "interrupted", None, as_json)
        except click.ClickException as exc:
            code = EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code
            details: dict[str, Any] = {}
            if isinstance(exc, click.BadParameter) and exc.param is not None:
                details["field"] = exc.param.opts[0] if exc.param.opts else exc.param.name
            hint = ""
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                hint = f" (see '{exc.ctx.command_path} --help')"
            message = " ".join(exc.format_message().split())
            error(UsageError.code, message + hint, details, as_json)
        except ZmeshError as exc:
            code = exit_code(exc)
            error(exc.code, " ".join(exc.message.split("\n")), exc.details, as_json)
        except BrokenPipeError:  # the reader went away (zmesh events | head -1)
            _silence_stdout()
            code = EXIT_OK
        except KeyboardInterrupt:
            code = 130
        except Exception as exc:  # a bug of ours: one line, the traceback in the log at -vv
            log.debug("unexpected error", exc_info=True)
            error("internal", f"unexpected {type(exc).__name__}: {exc} (run with -vv for the traceback)",
                  None, as_json)
            code = EXIT_REFUSED
        if standalone_mode:
            sys.exit(code)
        return code

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        finally:
            obj = ctx.find_object(Ctx)
            if obj is not None:
                obj.close()
            if _MESH_META in ctx.meta:  # --mesh set ZMESH_MESH for the command only
                before = ctx.meta.pop(_MESH_META)
                if before is None:
                    os.environ.pop(ENV_MESH, None)
                else:
                    os.environ[ENV_MESH] = before


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def setup_logging(verbose: int, *, zmesh_floor: int = logging.WARNING, fmt: str = "text") -> None:
    """Handlers live in the CLI only: one stderr handler; -v INFO, -vv DEBUG. zmesh's own
    loggers log at least at ``zmesh_floor`` (INFO for the broker), other libraries' at WARNING.
    ``fmt``: "text" or "json" (one object per line, zmesh/util/logs.py); called again, it
    changes the format of the handler it made."""
    level = max(logging.DEBUG, logging.WARNING - 10 * verbose)
    root = logging.getLogger()
    formatter = JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s")
    ours: list[logging.Handler] = [h for h in root.handlers if getattr(h, "zmesh", False)]
    if not root.handlers:
        made = logging.StreamHandler()
        made.zmesh = True  # type: ignore[attr-defined]
        root.addHandler(made)
        ours = [made]
    for handler in ours:
        handler.setFormatter(formatter)
    root.setLevel(level)
    logging.getLogger("zmesh").setLevel(min(level, zmesh_floor))


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--broker", envvar="ZMESH_BROKER", metavar="ENDPOINT", type=EndpointType(),
              help="Broker endpoint, tcp://HOST:PORT or ipc://PATH (env ZMESH_BROKER; "
                   "default tcp://127.0.0.1:7700).")
@click.option("--discover", is_flag=True, help="Find the broker on the LAN with zeroconf.")
@click.option("--mesh", type=MeshName(), help="Join the broker of this mesh, found on the LAN with zeroconf (implies "
              "--discover; not with --broker/ZMESH_BROKER). Default: env ZMESH_MESH, else 'default'.")
@json_flag
@click.option("--timeout", type=Seconds(0.1, 3600), default=DEFAULT_TIMEOUT_S, show_default=True,
              help="Seconds to wait for the broker's answer before exit 3.")
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-v info, -vv debug).")
@click.version_option(__version__, "-V", "--version", prog_name="zmesh",
                      help="Show the client version and exit (`zmesh version` asks the broker too).")
@click.pass_context
def main(ctx: click.Context, broker: str | None, discover: bool, mesh: str | None, timeout: float,
         verbose: int) -> None:
    """zmesh: real-time coordination for agents (lease broker, task claims, events)."""
    setup_logging(verbose)
    if mesh is not None:
        if broker is not None:
            given = "ZMESH_BROKER" if ctx.get_parameter_source("broker") == click.core.ParameterSource.ENVIRONMENT \
                else "--broker"
            raise click.UsageError(f"--mesh joins a broker found by discovery and {given} names one: give only one "
                                   f"of them{' (unset ZMESH_BROKER)' if given == 'ZMESH_BROKER' else ''}", ctx)
        # every client the command makes (the MCP server's and the gateway's too) joins that mesh
        ctx.meta[_MESH_META] = os.environ.get(ENV_MESH)
        os.environ[ENV_MESH] = mesh
        discover = True
    ctx.obj = Ctx(broker, discover, bool(ctx.meta.get(JSON_META)), timeout)
    for name in unknown_env(os.environ):
        meant = env_meant(name)
        log.warning("%s is not a zmesh setting (a typo?%s); it is ignored", name,
                    f" did you mean {meant}?" if meant else "")


def _register() -> None:
    from . import admin, agents, audit, backup, config_show, discover, events, gateway, guard, health, hooks, mcp, messages, reservations, security, serve, tasks, top, wait  # noqa: F401  (each module adds its commands to main)


_register()

__all__ = ["main", "EXIT_CODES"]
