"""Find zmesh brokers on the LAN with zeroconf (mDNS / DNS-SD), so agents need no configuration.

A broker advertises one ``_zmesh._tcp.local.`` service: the SRV record carries its ROUTER port,
the A records its addresses, and the TXT record ``id`` (broker id), ``pub`` (PUB port),
``proto`` (discovery record format, ``"1"``) and ``version`` (zmesh version). Clients browse
for that type and turn the first (or every) answer into a :class:`BrokerInfo`.

Design notes:

* **One interface by default.** python-zeroconf on ``InterfaceChoice.All`` joins the multicast
  group on every interface. On hosts with many interfaces (Docker bridges, veths, VPN tunnels)
  that has known problems: answers carry addresses unreachable from the asker, send errors are
  logged per interface and per packet, and startup gets slow. So by default we only use the
  IPv4 address(es) of the interface that holds the default route, found by reading
  ``/proc/net/route`` and the interface addresses (via ``ifaddr``, which zeroconf already
  depends on) -- no packet is sent to find it. Without a default route we fall back to every
  interface, like ``InterfaceChoice.All``. ``ZMESH_INTERFACES`` (comma-separated addresses or
  interface names) or an explicit ``interfaces`` argument overrides the choice.
* **Synchronous API.** We use :class:`zeroconf.Zeroconf`, which runs its own event-loop thread,
  so callers (the broker, the CLI, plain scripts) need no asyncio. Every instance created here
  is closed before the call returns (or in :meth:`Advertiser.close`), so no thread leaks.
* **Unregister says goodbye.** :meth:`Advertiser.close` unregisters the service, which sends
  TTL-0 records, so browsers drop a stopped broker at once instead of after the record TTL.
* **mDNS is not authenticated.** Anyone on the link can advertise ``_zmesh._tcp`` with any
  ``id``. Discovery is only a convenience to find an endpoint; a later step should pin the
  expected ``broker_id`` (``discover(broker_id=...)`` is the hook) and/or authenticate the
  broker (e.g. CURVE server key in TXT, checked against a pinned key).
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import re
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from .errors import InvalidArgument, Unreachable, ZmeshError
from .interfaces import ENV_INTERFACES, choose_interfaces, default_interfaces, local_networks

__all__ = [
    "SERVICE_TYPE",
    "PROTO",
    "BrokerInfo",
    "Advertiser",
    "browse",
    "discover",
    "default_interfaces",
    "parse_service",
    "broker_from_service_info",
]

log = logging.getLogger(__name__)

SERVICE_TYPE = "_zmesh._tcp.local."
#: version of the TXT record layout; brokers with another value are ignored by this client
PROTO = "1"
#: environment variable with comma-separated interface addresses (or names) to use

#: once one broker is resolved, how long browse() keeps listening for the others
_SETTLE = 0.5
#: upper bound for one ServiceInfo.request (ms); a broker that does not answer its SRV/TXT/A
#: within this is retried while the overall timeout allows
_RESOLVE_MS = 1500
_MAX_LABEL = 63


# --------------------------------------------------------------------------- BrokerInfo


@dataclass(frozen=True)
class BrokerInfo:
    """How to reach one broker, as its advertisement described it."""

    broker_id: str
    host: str
    port: int
    pub_port: int
    version: str

    @property
    def endpoint(self) -> str:
        """ZeroMQ endpoint of the broker's ROUTER socket."""
        return f"tcp://{_bracket(self.host)}:{self.port}"

    @property
    def pub_endpoint(self) -> str:
        """ZeroMQ endpoint of the broker's PUB socket."""
        return f"tcp://{_bracket(self.host)}:{self.pub_port}"


def _bracket(host: str) -> str:
    """IPv6 literals need brackets in a tcp:// endpoint; tolerate hosts given without them."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


# --------------------------------------------------------------------------- TXT parsing


def _text(value: bytes | str | None, key: str) -> str:
    if value is None:
        raise ValueError(f"TXT property {key!r} has no value")
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"TXT property {key!r} is not UTF-8") from exc
    return str(value)


def _port(value: Any, what: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not a port number: {value!r}") from exc
    if not 0 < port < 65536:
        raise ValueError(f"{what} out of range: {port}")
    return port


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


def parse_service(
    properties: Mapping[bytes | str, bytes | str | None],
    *,
    addresses: Sequence[str],
    port: int | None,
    local_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
) -> BrokerInfo:
    """Build a BrokerInfo from the raw parts of an advertisement.

    Kept free of zeroconf objects so the validation of untrusted (spoofable) TXT data can be
    tested on its own. Raises ValueError when the record is not a usable zmesh broker.
    """
    props: dict[str, bytes | str | None] = {}
    for key, value in properties.items():
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        props[name.lower()] = value
    proto = _text(props.get("proto"), "proto") if "proto" in props else None
    if proto != PROTO:
        raise ValueError(f"unsupported discovery proto {proto!r} (this client speaks {PROTO!r})")
    if "id" not in props:
        raise ValueError("TXT property 'id' missing")
    broker_id = _text(props["id"], "id").strip()
    if not broker_id:
        raise ValueError("TXT property 'id' is empty")
    if "pub" not in props:
        raise ValueError("TXT property 'pub' missing")
    pub_port = _port(_text(props["pub"], "pub"), "TXT property 'pub'")
    raw_version = props.get("version")
    version = _text(raw_version, "version") if raw_version is not None else ""
    router_port = _port(port, "SRV port")

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
    )


def broker_from_service_info(
    info: ServiceInfo,
    local_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
) -> BrokerInfo:
    """Adapter from a resolved zeroconf ServiceInfo; raises ValueError like parse_service."""
    return parse_service(
        info.properties,
        addresses=info.parsed_scoped_addresses(IPVersion.All),
        port=info.port,
        local_networks=local_networks,
    )


def _open_zeroconf(addresses: list[str]) -> Zeroconf:
    # An empty list would make zeroconf listen nowhere; no IPv4 at all means "let zeroconf try all".
    choice: list[str] | InterfaceChoice = addresses if addresses else InterfaceChoice.All
    log.debug("starting zeroconf on %s", choice)
    return Zeroconf(interfaces=choice)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Advertiser


def _server_name() -> str:
    """mDNS host name for the SRV target: first label of the host name, made DNS-safe."""
    label = socket.gethostname().split(".")[0]
    label = re.sub(r"[^A-Za-z0-9-]", "-", label).strip("-")[:_MAX_LABEL] or "zmesh-host"
    return f"{label}.local."


class Advertiser:
    """Advertise one broker. start() registers the service, close() unregisters it and stops zeroconf.

    Also a context manager. close() is idempotent and safe to call from a signal-driven shutdown
    path; the goodbye it sends lets browsers forget the broker immediately.
    """

    def __init__(
        self,
        *,
        broker_id: str,
        port: int,
        pub_port: int,
        version: str,
        interfaces: list[str] | None = None,
        name: str | None = None,
    ) -> None:
        if not broker_id:
            raise ValueError("broker_id must not be empty")
        self.broker_id = broker_id
        self.port = _port(port, "port")
        self.pub_port = _port(pub_port, "pub_port")
        self.version = version
        self._interfaces = interfaces
        instance = name or f"zmesh-{broker_id[:12]}"
        if instance.endswith("." + SERVICE_TYPE):
            instance = instance[: -len(SERVICE_TYPE) - 1]
        if not instance or len(instance.encode("utf-8")) > _MAX_LABEL:
            raise ValueError(f"service instance name must be 1..{_MAX_LABEL} bytes: {instance!r}")
        self._instance = instance
        self._lock = threading.Lock()
        self._zc: Zeroconf | None = None
        self._info: ServiceInfo | None = None

    @property
    def service_name(self) -> str:
        """Full service name as registered (zeroconf may have renamed it after a conflict)."""
        if self._info is not None:
            return self._info.name
        return f"{self._instance}.{SERVICE_TYPE}"

    @property
    def addresses(self) -> list[str]:
        """Addresses in the advertisement (empty before start())."""
        return self._info.parsed_addresses() if self._info is not None else []

    def _advertised_addresses(self, chosen: list[str], explicit: bool) -> list[str]:
        """Loopback is only advertised when asked for: remote agents cannot use it.

        If the host has nothing else, loopback is still advertised (with a warning) so agents
        on this host can find the broker.
        """
        plain = [a.partition("%")[0] for a in chosen]
        if explicit:
            return list(dict.fromkeys(plain))
        lan = [a for a in plain if not ipaddress.ip_address(a).is_loopback]
        if lan:
            return list(dict.fromkeys(lan))
        log.warning("no non-loopback IPv4 address; advertising broker %s on loopback only", self.broker_id)
        return list(dict.fromkeys(plain))

    def start(self) -> None:
        """Register the service; blocks for the mDNS probe/announce (about 1-2 s).

        Raises ZmeshError if zeroconf cannot start or the registration fails.
        """
        with self._lock:
            if self._zc is not None:
                return
            chosen, explicit = choose_interfaces(self._interfaces)
            advertised = self._advertised_addresses(chosen, explicit)
            info = ServiceInfo(
                SERVICE_TYPE,
                f"{self._instance}.{SERVICE_TYPE}",
                port=self.port,
                properties={
                    "id": self.broker_id,
                    "pub": str(self.pub_port),
                    "proto": PROTO,
                    "version": self.version,
                },
                server=_server_name(),
                parsed_addresses=advertised,
            )
            try:
                zc = _open_zeroconf(chosen)
            except (OSError, RuntimeError, ValueError) as exc:
                raise ZmeshError(
                    f"cannot start zeroconf on {chosen or 'all interfaces'}: {exc}",
                    {"interfaces": chosen},
                ) from exc
            try:
                zc.register_service(info, allow_name_change=True)
            except Exception as exc:
                zc.close()
                raise ZmeshError(
                    f"cannot advertise broker {self.broker_id} over zeroconf: {exc!r}",
                    {"interfaces": chosen, "name": info.name},
                ) from exc
            self._zc = zc
            self._info = info
            log.info(
                "advertising zmesh broker %s as %r on %s (port %d, pub %d)",
                self.broker_id,
                info.name,
                advertised,
                self.port,
                self.pub_port,
            )

    def close(self) -> None:
        """Unregister (goodbye packets) and stop zeroconf's thread; never raises."""
        with self._lock:
            zc, info = self._zc, self._info
            self._zc = None
            self._info = None
        if zc is None:
            return
        try:
            if info is not None:
                zc.unregister_service(info)
        except Exception:  # the goodbye is best effort; the record TTL expires anyway
            log.warning("zeroconf unregister of %s failed", self.broker_id, exc_info=True)
        finally:
            try:
                zc.close()
            except Exception:
                log.warning("zeroconf close failed", exc_info=True)
        log.info("stopped advertising zmesh broker %s", self.broker_id)

    def __enter__(self) -> Advertiser:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- browsing


def _collect(
    timeout: float,
    interfaces: Sequence[str] | None,
    *,
    broker_id: str | None,
    first_only: bool,
) -> tuple[list[BrokerInfo], list[str]]:
    """Browse for up to ``timeout`` seconds; returns (matching brokers, zeroconf addresses used).

    Resolution happens on the calling thread (ServiceInfo.request must not run on zeroconf's
    loop, and blocking the browser's handler thread would delay other events).
    """
    try:
        chosen, _explicit = choose_interfaces(interfaces)
    except ValueError as exc:
        raise InvalidArgument(str(exc), {"field": ENV_INTERFACES if interfaces is None else "interfaces"}) from None
    networks = local_networks(chosen)
    try:
        zc = _open_zeroconf(chosen)
    except (OSError, RuntimeError, ValueError) as exc:
        raise Unreachable(
            f"cannot browse for zmesh brokers: zeroconf failed to start on {chosen or 'all interfaces'}: {exc}",
            {"interfaces": chosen, "service_type": SERVICE_TYPE},
        ) from exc

    events: queue.SimpleQueue[tuple[str, ServiceStateChange]] = queue.SimpleQueue()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        events.put((name, state_change))

    found: dict[str, BrokerInfo] = {}
    pending: set[str] = set()
    browser: ServiceBrowser | None = None
    deadline = time.monotonic() + max(0.0, timeout)
    settle_until: float | None = None
    try:
        browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
        while True:
            now = time.monotonic()
            end = deadline if settle_until is None else min(deadline, settle_until)
            if now >= end:
                break
            batch: list[tuple[str, ServiceStateChange]] = []
            try:
                batch.append(events.get(timeout=min(0.1, end - now)))
                while True:  # drain every queued event before resolving
                    batch.append(events.get_nowait())
            except queue.Empty:
                pass
            for name, change in batch:
                if change is ServiceStateChange.Removed:
                    pending.discard(name)
                    if found.pop(name, None) is not None:
                        log.debug("zmesh broker %s said goodbye", name)
                else:
                    pending.add(name)
            for name in sorted(pending):
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                if remaining_ms <= 0:
                    break
                info = ServiceInfo(SERVICE_TYPE, name)
                if not info.request(zc, min(remaining_ms, _RESOLVE_MS)):
                    log.debug("zmesh service %s did not resolve yet", name)
                    continue
                pending.discard(name)
                try:
                    broker = broker_from_service_info(info, networks)
                except ValueError as exc:
                    log.info("ignoring zeroconf service %s: %s", name, exc)
                    continue
                if broker_id is not None and broker.broker_id != broker_id:
                    log.debug("skipping broker %s (looking for %s)", broker.broker_id, broker_id)
                    continue
                found[name] = broker
                if first_only:
                    return [broker], chosen
                if settle_until is None:
                    settle_until = time.monotonic() + _SETTLE
    finally:
        if browser is not None:
            browser.cancel()
        zc.close()
    return sorted(found.values(), key=lambda b: (b.broker_id, b.host, b.port)), chosen


def browse(timeout: float = 2.0, *, interfaces: list[str] | None = None) -> list[BrokerInfo]:
    """All brokers that answered within ``timeout`` seconds.

    Returns ``_SETTLE`` seconds after the first broker resolves instead of waiting the whole
    timeout: brokers answer the same multicast query together, so later ones are rare and a
    CLI listing should not sit idle. An empty list means nobody answered.
    """
    brokers, _ = _collect(timeout, interfaces, broker_id=None, first_only=False)
    return brokers


def discover(
    timeout: float = 3.0,
    *,
    interfaces: list[str] | None = None,
    broker_id: str | None = None,
) -> BrokerInfo:
    """The first broker found (with ``broker_id`` if given, to pin one broker on a shared LAN).

    Raises Unreachable when none answers in time, naming the ways to skip discovery.
    """
    brokers, chosen = _collect(timeout, interfaces, broker_id=broker_id, first_only=True)
    if brokers:
        return brokers[0]
    which = f"zmesh broker with id {broker_id}" if broker_id is not None else "zmesh broker"
    raise Unreachable(
        f"no {which} answered on the LAN within {float(timeout)} s (zeroconf {SERVICE_TYPE}); "
        "pass --broker or set ZMESH_BROKER",
        {
            "timeout": float(timeout),
            "service_type": SERVICE_TYPE,
            "interfaces": chosen,
            "broker_id": broker_id,
        },
    )
