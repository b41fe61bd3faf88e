"""The discovery record: what a broker's DNS-SD advertisement says and how a client reads it.

Rules it keeps:

* One service type, ``_zmesh._tcp.local.``: the SRV record carries the broker's ROUTER port,
  the A/AAAA records its addresses, the TXT record ``id`` (broker id), ``pub`` (PUB port),
  ``proto`` (this layout, ``"1"``), ``version`` (zmesh version), ``mesh`` (the mesh it
  serves) and, when the broker is secure, ``key`` (its CurveZMQ public key, 40 Z85
  characters). ``mesh`` and ``key`` are additions old parsers ignore, so ``proto`` stays
  ``"1"``; a record without ``mesh`` belongs to ``default``, one without ``key`` is a
  broker with security off.
* A record is data from anyone on the link: it is parsed strictly and a bad one is a
  ``ValueError`` saying what is wrong (the browser skips it with a rate-limited log line,
  never a crash): every property decodes as UTF-8, none is given twice, ``id`` is 1..64
  printable characters without spaces, ports are 1..65535, ``version`` is at most 64
  printable characters, ``mesh`` follows the mesh-name rule, ``key`` is valid Z85.
* Two brokers of one mesh: :func:`pick` joins the lowest broker id (then endpoint), the same
  choice on every client whatever order the answers came in, and warns naming them all.
* Kept free of zeroconf, so the parsing of untrusted data is tested on its own.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zmq.utils.z85

from ..util.logs import RateLimited
from ..errors import InvalidArgument
from ..transport.keys import Z85_KEY_CHARS, fingerprint
from .mesh import DEFAULT_MESH, check_mesh

__all__ = ["SERVICE_TYPE", "PROTO", "BrokerInfo", "parse_service", "txt_properties", "pick", "check_port",
           "MAX_ID_CHARS"]

log = logging.getLogger("zmesh.discovery")

SERVICE_TYPE = "_zmesh._tcp.local."
#: version of the TXT record layout; brokers with another value are ignored by this client
PROTO = "1"
MAX_ID_CHARS = 64
MAX_VERSION_CHARS = 64


@dataclass(frozen=True)
class BrokerInfo:
    """How to reach one broker, as its advertisement described it."""

    broker_id: str
    host: str
    port: int
    pub_port: int
    version: str
    mesh: str = DEFAULT_MESH
    #: the broker's CurveZMQ public key in Z85 (None: security off)
    key: str | None = None

    @property
    def endpoint(self) -> str:
        """ZeroMQ endpoint of the broker's ROUTER socket."""
        return f"tcp://{_bracket(self.host)}:{self.port}"

    @property
    def pub_endpoint(self) -> str:
        """ZeroMQ endpoint of the broker's PUB socket."""
        return f"tcp://{_bracket(self.host)}:{self.pub_port}"

    @property
    def fingerprint(self) -> str | None:
        """The key's fingerprint (16 hex digits), None without a key."""
        return fingerprint(self.key.encode("ascii")) if self.key else None

    def describe(self) -> str:
        """``broker ID at ENDPOINT`` for messages."""
        return f"broker {self.broker_id} at {self.endpoint}"


def _bracket(host: str) -> str:
    """IPv6 literals need brackets in a tcp:// endpoint; tolerate hosts given without them."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def txt_properties(*, broker_id: str, pub_port: int, version: str, mesh: str,
                   key: str | None) -> dict[str, str]:
    """The TXT record a broker advertises (``key`` only when it is secure)."""
    props = {"id": broker_id, "pub": str(pub_port), "proto": PROTO, "version": version, "mesh": mesh}
    if key is not None:
        props["key"] = key
    return props


# --------------------------------------------------------------------------- parsing


def _text(value: bytes | str | None, key: str) -> str:
    if value is None:
        raise ValueError(f"TXT property {key!r} has no value")
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"TXT property {key!r} is not UTF-8") from exc
    return str(value)


def check_port(value: Any, what: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not a port number: {value!r}") from exc
    if not 0 < port < 65536:
        raise ValueError(f"{what} out of range: {port}")
    return port


def _printable(text: str, key: str, limit: int, *, spaces: bool) -> str:
    if len(text) > limit:
        raise ValueError(f"TXT property {key!r} is longer than {limit} characters")
    if not text.isprintable() or (not spaces and any(c.isspace() for c in text)):
        raise ValueError(f"TXT property {key!r} holds control characters{'' if spaces else ' or spaces'}")
    return text


def _key(value: bytes | str | None) -> str | None:
    text = _text(value, "key").strip()
    if not text:
        return None
    if len(text) != Z85_KEY_CHARS:
        raise ValueError(f"TXT property 'key' is not a CurveZMQ public key ({Z85_KEY_CHARS} Z85 characters)")
    try:
        zmq.utils.z85.decode(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError, KeyError) as exc:
        raise ValueError("TXT property 'key' is not valid Z85") from exc
    return text


def _format_host(address: str) -> str:
    """Turn a zeroconf address string into the HOST part of tcp://HOST:PORT.

    zeroconf scopes link-local IPv6 addresses by interface index (``fe80::1%2``); libzmq
    resolves interface names more reliably than bare numbers, so the index becomes a name.
    """
    addr, _, scope = address.partition("%")
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return str(ip)
    if scope and ip.is_link_local:
        if scope.isdigit():
            try:
                scope = socket.if_indextoname(int(scope))
            except OSError:
                pass
        return f"[{ip}%{scope}]"
    return f"[{ip}]"


def _host_rank(address: str, local_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> int:
    """Lower is better: prefer an on-link IPv4 address, loopback only as a last resort."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    on_link = any(ip.version == net.version and ip in net for net in local_networks)
    if ip.is_loopback:
        return 6
    if ip.version == 4:
        return 0 if on_link else 1
    if ip.is_link_local:
        # without a scope the address is unusable on a multi-interface host
        return 4 if "%" in address else 5
    return 2 if on_link else 3


def _properties(properties: Mapping[Any, bytes | str | None]) -> dict[str, bytes | str | None]:
    props: dict[str, bytes | str | None] = {}
    for key, value in properties.items():
        try:
            name = key.decode("utf-8") if isinstance(key, bytes) else str(key)
        except UnicodeDecodeError:
            raise ValueError("a TXT property name is not UTF-8") from None
        name = name.lower()
        if name in props:
            raise ValueError(f"TXT property {name!r} given twice")
        props[name] = value
    return props


def parse_service(
    properties: Mapping[Any, bytes | str | None],  # keys: bytes (zeroconf) or str
    *,
    addresses: Sequence[str],
    port: int | None,
    local_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
) -> BrokerInfo:
    """Build a BrokerInfo from the raw parts of an advertisement.

    Raises ValueError when the record is not a usable zmesh broker (see the module rules).
    """
    props = _properties(properties)
    proto = _text(props.get("proto"), "proto") if "proto" in props else None
    if proto != PROTO:
        raise ValueError(f"unsupported discovery proto {proto!r} (this client speaks {PROTO!r})")
    if "id" not in props:
        raise ValueError("TXT property 'id' missing")
    broker_id = _text(props["id"], "id").strip()
    if not broker_id:
        raise ValueError("TXT property 'id' is empty")
    _printable(broker_id, "id", MAX_ID_CHARS, spaces=False)
    if "pub" not in props:
        raise ValueError("TXT property 'pub' missing")
    pub_port = check_port(_text(props["pub"], "pub"), "TXT property 'pub'")
    raw_version = props.get("version")
    version = _printable(_text(raw_version, "version"), "version", MAX_VERSION_CHARS, spaces=True) \
        if raw_version is not None else ""
    mesh = DEFAULT_MESH
    if "mesh" in props:
        try:
            mesh = check_mesh(_text(props["mesh"], "mesh"), "TXT property 'mesh'")
        except InvalidArgument as exc:
            raise ValueError(exc.message) from None
    key = _key(props["key"]) if "key" in props else None
    router_port = check_port(port, "SRV port")

    usable: list[str] = []
    for address in addresses:
        try:
            ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            log.debug("ignoring bad address %r of broker %s", address, broker_id)
            continue
        usable.append(address)
    if not usable:
        raise ValueError(f"broker {broker_id} advertised no address")
    best = min(usable, key=lambda a: _host_rank(a, local_networks))  # min() is stable: keeps zeroconf order on ties
    return BrokerInfo(
        broker_id=broker_id,
        host=_format_host(best),
        port=router_port,
        pub_port=pub_port,
        version=version,
        mesh=mesh,
        key=key,
    )


# --------------------------------------------------------------------------- two brokers, one mesh

_two = RateLimited(log, 60.0)


def pick(brokers: Sequence[BrokerInfo], mesh: str) -> BrokerInfo:
    """The broker a client of ``mesh`` joins among several that serve it: the lowest broker
    id (then endpoint), so every client on the LAN makes the same choice whatever order the
    answers came in. More than one is an operator's mistake (one mesh, one broker): a
    warning names them all. ``brokers`` must not be empty."""
    ordered = sorted(brokers, key=lambda b: (b.broker_id, b.endpoint))
    chosen = ordered[0]
    if len(ordered) > 1:
        _two.warning(mesh, "%d brokers serve mesh '%s': %s; joining %s (the lowest broker id; stop the others "
                     "or give them another --mesh)", len(ordered), mesh,
                     ", ".join(f"{b.broker_id} at {b.endpoint}" for b in ordered), chosen.broker_id)
    return chosen
