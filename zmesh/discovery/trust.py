"""Which discovered broker a client joins, and with which key (issue 17: a mesh that is safe
on a shared LAN, where anyone can advertise ``_zmesh._tcp``).

Rules it keeps:

* A client joins only brokers of its mesh (its argument, else ``$ZMESH_MESH``, else
  ``default``).
* **Pinned by configuration:** with ``ZMESH_SERVER_KEY`` (``server_key=``) a broker that
  advertises another key, or none, is refused: :class:`UntrustedBroker` naming both
  fingerprints (CLI exit 1).
* **Pinned on first use:** otherwise the known-hosts file's key for the mesh is the pin, and
  a refusal also names the file and the line to remove. A mesh not in the file is pinned to
  the key of the first secure broker joined (a broker with security off leaves no line).
* A secure broker and a client with no key pair of its own (``ZMESH_KEY``): a ConfigError
  saying to set it (exit 2). A client with a key pair and nothing pinned refuses a broker
  with security off: it expects CURVE and would otherwise talk in clear text to whoever
  answered (unset ``ZMESH_KEY`` to join a mesh with security off).
* Two acceptable brokers of one mesh: the lowest broker id (record.pick), with a warning
  naming both; a refused broker is logged with both fingerprints (rate-limited), and only
  raised when no acceptable one answered.
* Without security (no key in the record, nothing pinned, no key pair) discovery works as
  it always did.

No sockets here but the browse (mdns.collect); :func:`decide` is the pure part.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ..util.logs import RateLimited
from ..errors import ConfigError, UntrustedBroker
from ..transport.keys import fingerprint
from .known_hosts import KnownHosts, Pinned, first_seen_note
from .mdns import DISCOVER_SETTLE_S, collect, unreachable
from .record import BrokerInfo, pick

__all__ = ["Pin", "Trust", "decide", "find_broker"]

log = logging.getLogger("zmesh.discovery")
_refused = RateLimited(log, 60.0)


@dataclass(frozen=True)
class Pin:
    """The key a client expects of its mesh's broker, and where that expectation came from."""

    key: str  # Z85
    #: "ZMESH_SERVER_KEY", "server_key" or "FILE line N" (the known-hosts line)
    source: str
    #: the field an error names
    field: str
    #: set when the pin is a known-hosts line (the refusal says to remove it)
    known_hosts: bool = False

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key.encode("ascii"))

    @classmethod
    def from_line(cls, hosts: KnownHosts, pinned: Pinned) -> "Pin":
        return cls(pinned.key, hosts.where(pinned), hosts.field, known_hosts=True)


@dataclass(frozen=True)
class Trust:
    """What a client brings to discovery: its mesh, a configured pin, its key pair's field
    (None: the client has no key pair) and its known-hosts file (None: pin nothing)."""

    mesh: str
    pin: Pin | None = None
    key_field: str | None = None
    known_hosts: KnownHosts | None = None


def _fp(broker: BrokerInfo) -> str:
    return f"key {broker.fingerprint}" if broker.key else "no key (security off)"


def _refusal(broker: BrokerInfo, mesh: str, pin: Pin, more: int) -> UntrustedBroker:
    also = f" (and {more} other broker(s) of the mesh with keys not pinned)" if more else ""
    if pin.known_hosts:
        how = (f"the key {pin.fingerprint} pinned on first use in {pin.source}; if the broker's key changed on "
               "purpose, remove that line")
    else:
        how = f"the key {pin.fingerprint} pinned by {pin.source}"
    return UntrustedBroker(
        f"refused {broker.describe()} of mesh '{mesh}': it has {_fp(broker)}, not {how}{also}",
        {"field": pin.field, "mesh": mesh, "broker_id": broker.broker_id, "endpoint": broker.endpoint,
         "fingerprint": broker.fingerprint, "pinned": pin.fingerprint, "source": pin.source})


def decide(brokers: Sequence[BrokerInfo], trust: Trust, pin: Pin | None) -> BrokerInfo:
    """The broker to join among ``brokers`` (all of ``trust.mesh``, at least one) under
    ``pin``; raises UntrustedBroker or ConfigError as the module rules say."""
    mesh = trust.mesh
    if pin is not None:
        ok = [b for b in brokers if b.key == pin.key]
        bad = sorted((b for b in brokers if b.key != pin.key), key=lambda b: (b.broker_id, b.endpoint))
        for b in bad:
            _refused.warning(f"{mesh}/{b.broker_id}/{b.key}", "refused %s of mesh '%s': it has %s, not the key %s "
                             "pinned by %s", b.describe(), mesh, _fp(b), pin.fingerprint, pin.source)
        if not ok:
            raise _refusal(bad[0], mesh, pin, len(bad) - 1)
        chosen = pick(ok, mesh)
    elif trust.key_field is not None:
        secure = [b for b in brokers if b.key]
        if not secure:
            b = pick(brokers, mesh)
            raise UntrustedBroker(
                f"refused {b.describe()} of mesh '{mesh}': it has no key (security off), and this client has a "
                f"key pair ({trust.key_field}), so it expects a secure broker; unset {trust.key_field} to join "
                "a mesh with security off", {"field": trust.key_field, "mesh": mesh, "broker_id": b.broker_id,
                                             "endpoint": b.endpoint, "fingerprint": None, "pinned": None})
        chosen = pick(secure, mesh)
    else:
        chosen = pick(brokers, mesh)
    if chosen.key and trust.key_field is None:
        raise ConfigError(
            f"{chosen.describe()} of mesh '{mesh}' is secure (key {chosen.fingerprint}): set ZMESH_KEY to this "
            "client's .key_secret file (`zmesh keygen NAME`; its NAME.key goes into the broker's "
            "authorized_keys)", {"field": "ZMESH_KEY", "mesh": mesh, "broker_id": chosen.broker_id,
                                 "fingerprint": chosen.fingerprint})
    return chosen


def find_broker(trust: Trust, timeout: float, interfaces: list[str] | None = None
                ) -> tuple[BrokerInfo, Pin | None]:
    """Browse for the brokers of ``trust.mesh`` and join one: the broker and the pin it was
    checked against (None: security off). A secure broker joined with nothing pinned is
    pinned in the known-hosts file here. Raises Unreachable when none of the mesh answers."""
    mesh = trust.mesh
    seen = collect(timeout, interfaces, accept=lambda b: b.mesh == mesh, settle=DISCOVER_SETTLE_S)
    if not seen.brokers:
        raise unreachable(mesh, timeout, seen)
    pin = trust.pin
    hosts = trust.known_hosts
    if pin is None and hosts is not None:
        line = hosts.get(mesh)
        if line is not None:
            pin = Pin.from_line(hosts, line)
    chosen = decide(seen.brokers, trust, pin)
    if pin is None and chosen.key and hosts is not None:
        line = hosts.pin(mesh, chosen.key, first_seen_note(chosen.broker_id, chosen.endpoint))
        pin = Pin.from_line(hosts, line)
        if line.key != chosen.key:  # another client pinned another broker of the mesh meanwhile
            raise _refusal(chosen, mesh, pin, 0)
        log.warning("pinned mesh '%s' to the key %s of %s on first use (%s); a broker of the mesh with another "
                    "key will be refused", mesh, chosen.fingerprint, chosen.describe(), pin.source)
    elif pin is None and chosen.key:  # no file to pin in: this client trusts the key for its lifetime
        pin = Pin(chosen.key, f"first use by this client ({chosen.describe()})", "known_hosts")
    return chosen, pin
