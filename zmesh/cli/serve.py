"""``zmesh broker``: run the lease broker in the foreground until SIGINT/SIGTERM.

Rules: the configuration is loaded and checked in full before anything is opened (a bad
key is exit 2 naming it); a data directory in use or an address taken is exit 1; the broker
logs at INFO by default (-v: debug) to stderr.
"""

from __future__ import annotations

import logging

import click

from .. import protocol
from ..config import LOG_FORMATS, BrokerConfig
from ..errors import BindError
from ..store import DURABILITY
from . import main, setup_logging
from ._options import EndpointType, MeshName, Seconds


@main.command()
@click.option("--data", metavar="DIR", help="Data directory (env ZMESH_DATA; default ~/.local/share/zmesh).")
@click.option("--bind", multiple=True, type=EndpointType(bind=True),
              help="ROUTER endpoint clients dial; repeatable (env ZMESH_BIND; default tcp://*:7700).")
@click.option("--pub-bind", multiple=True, type=EndpointType(bind=True),
              help="PUB endpoint events go out on; repeatable (env ZMESH_PUB_BIND; default tcp://*:7701).")
@click.option("--no-ipc", is_flag=True, default=None,
              help="Do not also bind ipc:// endpoints in the data directory (env ZMESH_IPC=0).")
@click.option("--no-discovery", is_flag=True, default=None,
              help="Do not advertise on the LAN with zeroconf (env ZMESH_DISCOVERY=0).")
@click.option("--mesh", type=MeshName(), help="The mesh this broker serves, in its discovery record: clients join "
              "the brokers of their mesh (env ZMESH_MESH; default 'default').")
@click.option("--store", metavar="etcd://HOST:PORT[,...]",
              help="Replicate the mesh's state through this etcd cluster: this broker's LMDB is one replica and a "
                   "write is acknowledged when etcd has it (env ZMESH_STORE; default: this broker's own LMDB; "
                   "docs/CLUSTER.md).")
@click.option("--leader-ttl", type=click.IntRange(2, 60),
              help="With --store: seconds the active broker's leader key outlives it (env ZMESH_LEADER_TTL; "
                   "default 5).")
@click.option("--secure", is_flag=True, default=None,
              help="CurveZMQ on every endpoint; only clients whose key is in authorized_keys get in (env "
                   "ZMESH_SECURE=1; keys: see `zmesh keygen`).")
@click.option("--durability", type=click.Choice(DURABILITY),
              help="full: each batch's journal record flushed before its replies, survives power loss (default); "
                   "fast: flushed right after the replies; none: not flushed (docs/JOURNAL.md).")
@click.option("--ttl", type=Seconds(protocol.MIN_TTL_S, protocol.MAX_TTL_S),
              help="Lease TTL in seconds for agents that do not ask for one (env ZMESH_DEFAULT_TTL; default 30).")
@click.option("--log-format", type=click.Choice(LOG_FORMATS),
              help="text: a line per record (default); json: one JSON object per line (env ZMESH_LOG_FORMAT).")
@click.option("--drain-timeout", type=Seconds(0.0, 300.0),
              help="On SIGTERM, seconds to keep answering the requests already received before exiting "
                   "(env ZMESH_DRAIN_TIMEOUT; default 5).")
@click.option("--metrics", metavar="HOST:PORT",
              help="Serve GET /metrics (Prometheus) and GET /health over HTTP on this address, e.g. "
                   "127.0.0.1:7702; port 0 picks a free one (env ZMESH_METRICS; default: off).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config file (env ZMESH_CONFIG; see conf/zmesh.toml).")
@click.option("-v", "--verbose", count=True, help="Debug logging (also accepted before `broker`).")
@click.pass_context
def broker(ctx: click.Context, data: str | None, bind: tuple[str, ...], pub_bind: tuple[str, ...],
           no_ipc: bool | None, no_discovery: bool | None, mesh: str | None, store: str | None,
           leader_ttl: int | None, secure: bool | None, durability: str | None,
           ttl: float | None, log_format: str | None, drain_timeout: float | None, metrics: str | None,
           config_path: str | None, verbose: int) -> None:
    """Run the lease broker until SIGINT/SIGTERM."""
    from ..broker.loop import Broker, tune_gc

    parent_verbose = ctx.parent.params.get("verbose", 0) if ctx.parent is not None else 0
    setup_logging(parent_verbose + verbose, zmesh_floor=logging.INFO)  # the broker tells what it does
    config = BrokerConfig.load(
        config_path, data=data, bind=list(bind), pub_bind=list(pub_bind),
        ipc=None if no_ipc is None else not no_ipc,
        discovery=None if no_discovery is None else not no_discovery,
        durability=durability, default_ttl=ttl, secure=secure, mesh=mesh, store=store, leader_ttl=leader_ttl,
        log_format=log_format,
        drain_timeout=drain_timeout, metrics=metrics)
    if config.log_format != "text":
        setup_logging(parent_verbose + verbose, zmesh_floor=logging.INFO, fmt=config.log_format)
    server = Broker(config)
    try:
        server.bind()
    except OSError as exc:
        server.close()
        raise BindError(str(exc)) from None
    tune_gc()
    server.serve()

