"""The broker's sockets: the ROUTER clients dial and the PUB events go out on, bound with
the options that bound what one peer can make the broker hold.

Rules it keeps:

* Nothing is bound before the ZAP gate is in (when secure): no connection is ever taken
  unauthenticated.
* An IPC socket file is the owner's alone: bound under umask 0177, so it is mode 0600 from
  the moment it exists, whatever the process umask.
* A bind that fails closes what was opened and removes the IPC files it made; the error
  names the endpoint.
* The queue limits (high-water marks) are stated here once; broker.py's docstring says why.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import zmq

from .. import protocol
from ..config import BrokerConfig

log = logging.getLogger("zmesh.broker")

PEER_RCVHWM = 1_000
PEER_SNDHWM = 10_000  # well above a burst of replies to one peer (a batch is at most MAX_BATCH)
SUB_SNDHWM = 10_000


def ipc_endpoint(data_dir: str, name: str) -> str:
    return "ipc://" + os.path.join(os.path.abspath(data_dir), name)


@dataclass
class Bound:
    """What :func:`open_sockets` bound."""

    pub: zmq.Socket
    router: zmq.Socket
    endpoints: list[str] = field(default_factory=list)  #: ROUTER endpoints as bound (ports resolved)
    pub_endpoints: list[str] = field(default_factory=list)
    ipc_paths: list[str] = field(default_factory=list)  #: socket files to remove on close


def open_sockets(ctx: zmq.Context, config: BrokerConfig, gate: Any = None) -> Bound:
    """Bind the PUB and ROUTER sockets on the configured endpoints (and the ipc ones);
    raises OSError naming the endpoint that could not be bound."""
    binds = list(config.bind)
    pub_binds = list(config.pub_bind)
    if config.ipc:
        binds.append(ipc_endpoint(config.data, "zmesh.ipc"))
        pub_binds.append(ipc_endpoint(config.data, "zmesh-pub.ipc"))
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, SUB_SNDHWM)
    pub.setsockopt(zmq.LINGER, 0)
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.ROUTER_HANDOVER, 1)
    router.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_FRAME_BYTES)
    router.setsockopt(zmq.RCVHWM, PEER_RCVHWM)
    router.setsockopt(zmq.SNDHWM, PEER_SNDHWM)
    router.setsockopt(zmq.LINGER, 500)
    router.setsockopt(zmq.HEARTBEAT_IVL, 5_000)
    router.setsockopt(zmq.HEARTBEAT_TIMEOUT, 15_000)
    if gate is not None:
        gate.secure(pub)
        gate.secure(router)
    out = Bound(pub, router)
    try:
        for sock, eps, bound in ((pub, pub_binds, out.pub_endpoints), (router, binds, out.endpoints)):
            for ep in eps:
                ipc = ep.startswith("ipc://")
                old = os.umask(0o177) if ipc else None
                try:
                    sock.bind(ep)
                finally:
                    if old is not None:
                        os.umask(old)
                bound.append(sock.last_endpoint.decode())
                if ipc:
                    out.ipc_paths.append(ep[len("ipc://"):])
    except zmq.ZMQError as exc:
        pub.close(0)
        router.close(0)
        remove_ipc_files(out.ipc_paths)
        raise OSError(f"cannot bind {ep}: {exc}") from None
    return out


def remove_ipc_files(paths: list[str]) -> None:
    """libzmq removes an ipc socket file only if its I/O thread gets to it before the
    process exits; the broker owns these files (its data directory's lock says so)."""
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s: %s", path, exc)
    paths.clear()
