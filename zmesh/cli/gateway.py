"""``zmesh gateway``: serve the HTTP gateway (zmesh/adapters/http.py) in the foreground until
SIGINT/SIGTERM.

Rules: ``--listen`` is checked where it enters (HOST:PORT, a port 1..65535, an IP address or
a host name), and bound before anything starts: an address in use is exit 1 naming it, as
for the broker. ``--tokens FILE`` makes every call carry a bearer token that names the
agent it may act as (zmesh/adapters/http_auth.py). An address other than loopback without
tokens is refused (exit 2) unless ``--no-auth`` says so on purpose, and then logged as a
warning. FastAPI and uvicorn are an optional dependency (``pip install
'zmesh[gateway]'``): without them the command is a usage error that says what to install.
Logs go to stderr (INFO by default, -v for debug). uvicorn's access log is off unless -v.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from typing import Any

import click

from .. import protocol
from ..adapters import defaults
from ..errors import BindError, UsageError
from . import main, setup_logging
from ._options import Seconds, load_extra
from ._output import Ctx, pass_ctx

log = logging.getLogger("zmesh.cli")

DEFAULT_LISTEN = "127.0.0.1:7780"
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


class ListenType(click.ParamType):
    """HOST:PORT to listen on (``[::1]:PORT`` for IPv6)."""

    name = "HOST:PORT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        text = str(value)
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            self.fail(f"{text!r} is not HOST:PORT with a port in 1..65535", param, ctx)
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not _HOSTNAME.fullmatch(host):
                self.fail(f"{host!r} is neither an IP address nor a host name", param, ctx)
        return host, int(port)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@main.command()
@click.option("--listen", type=ListenType(), default=DEFAULT_LISTEN, show_default=True,
              help="HOST:PORT the HTTP gateway listens on.")
@click.option("--ttl", type=Seconds(protocol.MIN_TTL_S, protocol.MAX_TTL_S), default=defaults.HTTP_TTL_S, show_default=True,
              help="Lease TTL of an HTTP agent: it must call at least this often, or its claims go back.")
@click.option("--wait-max", type=Seconds(1.0, protocol.MAX_WAIT_S), default=defaults.HTTP_WAIT_MAX_S, show_default=True,
              help="Longest long-poll wait (GET /agent/ID/wait).")
@click.option("--tokens", "tokens_file", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Bearer tokens, one 'TOKEN AGENT' per line (AGENT an agent id, or * for any agent and "
                   "/task/assign); the file must not be readable by others.")
@click.option("--no-auth", is_flag=True, help="Serve a non-loopback --listen without tokens (anyone who "
                                               "reaches it acts as any agent).")
@click.option("-v", "--verbose", count=True, help="Debug logging and the HTTP access log.")
@pass_ctx
def gateway(ctx: Ctx, listen: tuple[str, int], ttl: float, wait_max: float, tokens_file: str | None,
            no_auth: bool, verbose: int) -> None:
    """Serve HTTP for agents that speak neither ZeroMQ nor MCP: the predecessor notifier's API
    (/agent/STATE, /status, /task/assign, /broadcast), claim and complete, a long-poll wait
    for work, messages and path reservations. OpenAPI at /openapi.json."""
    setup_logging(verbose, zmesh_floor=logging.INFO)
    http = load_extra("zmesh.adapters.http", "gateway", "gateway")
    import uvicorn

    from ..adapters.http_auth import Tokens

    host, port = listen
    tokens = Tokens.load(tokens_file) if tokens_file is not None else None
    if tokens is None and not _loopback(host):
        if not no_auth:
            raise UsageError(f"--listen {host}:{port} is not loopback: give --tokens FILE, or --no-auth to let "
                             "anyone who reaches it act as any agent", {"field": "--tokens"})
        log.warning("the gateway listens on %s, not loopback, without tokens (--no-auth): anyone who "
                    "reaches it can act as any agent", host)
    sock = _bind(host, port)  # here, so an address in use is a clear error before anything starts
    app = http.build_app(ctx.endpoint(), ttl=ttl, timeout=ctx.timeout, wait_max=wait_max, tokens=tokens)
    if tokens is not None:
        log.info("gateway calls need a bearer token: %d token(s) from %s", len(tokens), tokens_file)
    config = uvicorn.Config(app, log_config=None, access_log=verbose > 0,
                            log_level="debug" if verbose > 1 else "info", lifespan="on")
    log.info("zmesh gateway on http://%s:%d for broker %s", host, port, ctx.endpoint() or "(discovery)")
    uvicorn.Server(config).run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(f"--listen {host}:{port}: {exc.strerror}", {"field": "--listen"}) from None
    family, kind, proto, _name, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise BindError(f"--listen {host}:{port}: {exc.strerror}", {"field": "--listen"}) from None
    return sock
