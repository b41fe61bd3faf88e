"""``zmesh mcp``: serve MCP over stdio as one agent (for Claude Code, Codex CLI and other MCP
clients; see zmesh/adapters/mcp.py and docs/MCP.md).

Rules: stdout belongs to the protocol, and every log line goes to stderr (INFO with -v).
The agent is ``--agent``, else ``$ZMESH_AGENT``, else host:working-directory. The MCP SDK is
an optional dependency (``pip install 'zmesh[mcp]'``): without it the command is a usage
error that says what to install. The process ends when stdin closes, after the agent is
unregistered.
"""

from __future__ import annotations

import logging

import click

from .. import protocol
from ..adapters import defaults
from ..errors import UsageError, ZmeshError
from . import main, setup_logging
from ._options import IdType, Seconds, field_option, load_extra
from ._output import Ctx, pass_ctx

log = logging.getLogger("zmesh.cli")


@main.command("mcp")
@click.option("--agent", type=IdType("id"), default=None,
              help="The agent this server is on the mesh (default: $ZMESH_AGENT, else host:working-directory).")
@field_option("register", "capabilities", "--capability", "capability", metavar="CAP",
              help="A capability of the agent; repeatable (tasks that require others are not its work).")
@field_option("register", "ttl", metavar="SECONDS", help="The agent's lease TTL: what it holds goes back this "
              "long after the server dies (default: the broker's).")
@click.option("--wait-max", type=Seconds(1.0, protocol.MAX_WAIT_S), default=None,
              help="Longest wait of wait_for_work and reserve_paths, and the default of wait_for_work "
                   f"[default: {defaults.MCP_WAIT_MAX_S:g}: a silent call of about 30 s may be cut by a proxy or a "
                   "stateless client; raise it with the client's timeout].")
@click.option("--channel", is_flag=True,
              help="Push assignments and urgent messages into an idle Claude Code session (channels, a "
                   "research preview).")
@click.option("--progress-every", type=Seconds(0.1, 3600.0), default=defaults.PROGRESS_EVERY_S, show_default=True,
              help="Seconds between progress notifications while wait_for_work waits (for clients that "
                   "asked for progress; Claude Code's idle timeout restarts with each).")
@click.option("-v", "--verbose", count=True, help="Log to stderr (-v info, -vv debug).")
@pass_ctx
def mcp(ctx: Ctx, agent: str | None, capability: tuple[str, ...], ttl: float | None, wait_max: float | None,
        channel: bool, progress_every: float, verbose: int) -> None:
    """Serve MCP over stdin/stdout as one agent on the mesh: tools to wait for work, claim,
    complete, reserve paths and message (docs/MCP.md). Ends when stdin closes."""
    setup_logging(verbose)
    mcp_server = load_extra("zmesh.adapters.mcp", "mcp", "mcp")
    import anyio

    from ..adapters.session import AgentSession

    try:
        name = agent or mcp_server.default_agent()
    except ZmeshError as exc:
        raise UsageError(exc.message, {"field": "--agent"}) from None
    session = AgentSession(ctx.endpoint(), name, capabilities=capability, ttl=ttl, timeout=ctx.timeout)
    log.info("zmesh mcp: agent %s, broker %s", name, ctx.endpoint() or "(discovery)")
    anyio.run(lambda: mcp_server.serve_stdio(session, wait_max=wait_max or defaults.MCP_WAIT_MAX_S,
                                             channel=channel, progress_every=progress_every))
