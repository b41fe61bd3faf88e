"""How a client made with no endpoint finds its broker, and finds it again after it moved.
Both drivers use it (blocking; AsyncClient runs it in an executor).

Rules it keeps:

* Everything is checked before the first packet: the mesh name, the key files, the
  known-hosts path, and that a pinned broker key comes with this client's own key pair.
* The first find pins what it joined (zmesh/discovery/trust.py: the configured key, else
  the known-hosts line, else the key pinned on this first use); every later find, when
  the client follows a moved broker, is held to that same pin. A broker with security off
  stays followable only by brokers with security off.
* A find returns the endpoint and the socket options for it (CURVE with the pinned key,
  or none).
* Following (:meth:`Finder.follow`, after a request went unanswered): the broker is
  followed only to a different endpoint; finding it where it was, or finding none, leaves
  the client where it is (said in the log).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..discovery.mesh import resolve_mesh
from ..errors import Unreachable
from ._protocol import Curve

if TYPE_CHECKING:
    from ..discovery.record import BrokerInfo

log = logging.getLogger("zmesh.client")

#: a discovery never takes longer than this, whatever the client's timeout
MAX_DISCOVERY_S = 3.0


class Finder:
    """The discovery state of one client: its mesh and what it trusts."""

    def __init__(self, mesh: str | None, curve: Curve, known_hosts: str | None = None,
                 interfaces: list[str] | None = None) -> None:
        from ..discovery.known_hosts import known_hosts_file
        from ..discovery.trust import (  # zeroconf: loaded by the clients that discover
            Pin,
            Trust,
        )

        self.mesh = resolve_mesh(mesh)
        self._curve = curve
        if curve.server is not None and curve.pair is None:
            curve.options()  # raises: a pinned broker key needs this client's key pair too
        pin = None
        if curve.server is not None:
            pin = Pin(curve.server.decode("ascii"), curve.server_field, curve.server_field)
        self._hosts = known_hosts_file(known_hosts)
        self._trust = Trust(self.mesh, pin, curve.key_field if curve.pair is not None else None, self._hosts)
        self._interfaces = interfaces
        #: the broker joined last (None before the first find)
        self.broker: BrokerInfo | None = None

    def find(self, timeout: float) -> tuple[str, tuple[tuple[int, Any], ...]]:
        """The endpoint of this client's broker and the socket options to reach it; raises
        Unreachable (none of the mesh answered), UntrustedBroker or ConfigError."""
        from ..discovery.trust import Trust, find_broker

        broker, pin = find_broker(self._trust, min(timeout, MAX_DISCOVERY_S), self._interfaces)
        if self._trust.pin is None:
            # from now on the client follows only a broker with the key it joined (or, with
            # security off, one with no key: decide() refuses a keyed one without a key pair)
            self._trust = Trust(self.mesh, pin, self._trust.key_field, self._hosts)
        self.broker = broker
        options = self._curve.options(pin.key.encode("ascii")) if pin is not None else ()
        return broker.endpoint, options

    def follow(self, dialled: str, timeout: float) -> tuple[str, tuple[tuple[int, Any], ...]] | None:
        """The broker at ``dialled`` went silent: look for the mesh again. Where it is now
        and the socket options for it, if that is elsewhere; else None."""
        try:
            endpoint, options = self.find(timeout)
        except Unreachable as exc:
            log.info("broker at %s silent and no broker of mesh '%s' answered discovery: %s", dialled,
                     self.mesh, exc.message)
            return None
        if endpoint == dialled:
            return None
        log.info("broker of mesh '%s' moved from %s to %s (broker %s); following it", self.mesh, dialled,
                 endpoint, self.broker.broker_id if self.broker else "?")
        return endpoint, options
