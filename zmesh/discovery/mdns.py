"""zeroconf (mDNS / DNS-SD) on the wire: the broker's Advertiser, and the browser clients and
``zmesh discover`` use. The record's format is record.py's; which broker a client trusts is
trust.py's.

Rules it keeps:

* **One interface by default.** python-zeroconf on ``InterfaceChoice.All`` joins the multicast
  group on every interface. On hosts with many interfaces (Docker bridges, veths, VPN tunnels)
  that has known problems: answers carry addresses unreachable from the asker, send errors are
  logged per interface and per packet, and startup gets slow. So by default we only use the
  IPv4 address(es) of the interface that holds the default route (interfaces.py; no packet
  is sent to find it). ``ZMESH_INTERFACES`` or an explicit ``interfaces`` argument overrides it.
* **Synchronous API.** We use :class:`zeroconf.Zeroconf`, which runs its own event-loop thread,
  so callers (the broker, the CLI, plain scripts) need no asyncio. Every instance created here
  is closed before the call returns (or in :meth:`Advertiser.close`), so no thread leaks.
* **Unregister says goodbye.** :meth:`Advertiser.close` unregisters the service, which sends
  TTL-0 records, so browsers drop a stopped broker at once instead of after the record TTL.
* **A bad record is skipped, never fatal.** Anyone on the link can advertise
  ``_zmesh._tcp``; a record that does not parse is logged (at most once a minute per
  service name) and ignored.
* **Browse from an ephemeral port, and listen on 5353 too.** The browser runs a one-shot
  querier (``unicast=True``: RFC 6762's legacy unicast, section 6.7), which responders answer
  at once, straight to its port, instead of after a 20-120 ms random delay (or a second, for
  a record they multicast less than a second ago); on the broker's own host that answer
  cannot go to another process bound to port 5353 either. Beside it a plain browser on 5353
  hears the multicast answers, for a host whose firewall lets only port 5353 in. Whichever
  hears a broker first resolves it.
* **Listen a little longer than the first answer.** Every broker answers the same query at
  once, so after the first matching one the browser listens ``settle`` seconds more: enough
  to see a second broker of the same mesh, and to choose between them the same way every time.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from ..util.logs import RateLimited
from ..errors import InvalidArgument, Unreachable, ZmeshError
from .interfaces import ENV_INTERFACES, choose_interfaces, local_networks
from .mesh import DEFAULT_MESH, check_mesh, resolve_mesh
from ..transport.keys import fingerprint
from .record import SERVICE_TYPE, BrokerInfo, check_port, parse_service, pick, txt_properties

__all__ = ["Advertiser", "Browse", "collect", "browse", "discover", "broker_from_service_info"]

log = logging.getLogger("zmesh.discovery")

#: once one broker is resolved, how long browse() (a listing) keeps listening for the others
BROWSE_SETTLE_S = 0.5
#: ... and how long a client choosing its broker does (brokers answer a query at once)
DISCOVER_SETTLE_S = 0.15
#: upper bound for one ServiceInfo.request (ms); a broker that does not answer its SRV/TXT/A
#: within this is retried while the overall timeout allows
_RESOLVE_MS = 1500
_MAX_LABEL = 63
_bad = RateLimited(log, 60.0)


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


def _open_zeroconf(addresses: list[str], *, unicast: bool = False) -> Zeroconf:
    """A responder on port 5353 (an advertiser), or with ``unicast`` a querier on an
    ephemeral port whose answers come straight back to it (a browse)."""
    # An empty list would make zeroconf listen nowhere; no IPv4 at all means "let zeroconf try all".
    choice: list[str] | InterfaceChoice = addresses if addresses else InterfaceChoice.All
    log.debug("starting zeroconf on %s%s", choice, " (querier)" if unicast else "")
    return Zeroconf(interfaces=choice, unicast=unicast)  # type: ignore[arg-type]


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
        mesh: str = DEFAULT_MESH,
        key: str | None = None,
    ) -> None:
        if not broker_id:
            raise ValueError("broker_id must not be empty")
        self.broker_id = broker_id
        self.port = check_port(port, "port")
        self.pub_port = check_port(pub_port, "pub_port")
        self.version = version
        self.mesh = check_mesh(mesh)
        #: the broker's public key in Z85 when it is secure (clients pin it)
        self.key = key
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
                properties=txt_properties(broker_id=self.broker_id, pub_port=self.pub_port,
                                          version=self.version, mesh=self.mesh, key=self.key),
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
                "advertising zmesh broker %s of mesh '%s' as %r on %s (port %d, pub %d, key %s)",
                self.broker_id,
                self.mesh,
                info.name,
                advertised,
                self.port,
                self.pub_port,
                fingerprint(self.key.encode("ascii")) if self.key else "none: security off",
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


@dataclass
class Browse:
    """What one browse saw: the brokers it was asked for, the others that answered
    (another mesh, another id), and the addresses zeroconf ran on."""

    brokers: list[BrokerInfo] = field(default_factory=list)
    others: list[BrokerInfo] = field(default_factory=list)
    interfaces: list[str] = field(default_factory=list)


def collect(
    timeout: float,
    interfaces: Sequence[str] | None = None,
    *,
    accept: Callable[[BrokerInfo], bool] | None = None,
    settle: float = BROWSE_SETTLE_S,
) -> Browse:
    """Browse for up to ``timeout`` seconds, or ``settle`` seconds after the first broker
    ``accept`` takes (all, without ``accept``).

    Resolution happens on the calling thread (ServiceInfo.request must not run on zeroconf's
    loop, and blocking the browser's handler thread would delay other events).
    """
    try:
        chosen, _explicit = choose_interfaces(interfaces)
    except ValueError as exc:
        raise InvalidArgument(str(exc), {"field": ENV_INTERFACES if interfaces is None else "interfaces"}) from None
    networks = local_networks(chosen)
    zcs: list[Zeroconf] = []
    failures: list[str] = []
    for unicast in (True, False):  # the fast querier, and a listener on 5353 a firewall lets answers reach
        try:
            zcs.append(_open_zeroconf(chosen, unicast=unicast))
        except (OSError, RuntimeError, ValueError) as exc:
            failures.append(str(exc))
    if not zcs:
        raise Unreachable(
            f"cannot browse for zmesh brokers: zeroconf failed to start on {chosen or 'all interfaces'}: "
            f"{failures[0]}", {"interfaces": chosen, "service_type": SERVICE_TYPE})

    events: queue.SimpleQueue[tuple[Zeroconf, str, ServiceStateChange]] = queue.SimpleQueue()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        events.put((zeroconf, name, state_change))

    found: dict[str, BrokerInfo] = {}
    others: dict[str, BrokerInfo] = {}
    pending: dict[str, Zeroconf] = {}  # service name -> the zeroconf that heard of it (resolves it)
    browsers: list[ServiceBrowser] = []
    deadline = time.monotonic() + max(0.0, timeout)
    settle_until: float | None = None
    try:
        browsers += [ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change]) for zc in zcs]
        while True:
            now = time.monotonic()
            end = deadline if settle_until is None else min(deadline, settle_until)
            if now >= end:
                break
            batch: list[tuple[Zeroconf, str, ServiceStateChange]] = []
            try:
                batch.append(events.get(timeout=min(0.1, end - now)))
                while True:  # drain every queued event before resolving
                    batch.append(events.get_nowait())
            except queue.Empty:
                pass
            for zc, name, change in batch:
                if change is ServiceStateChange.Removed:
                    pending.pop(name, None)
                    others.pop(name, None)
                    if found.pop(name, None) is not None:
                        log.debug("zmesh broker %s said goodbye", name)
                elif name not in found and name not in others:
                    pending.setdefault(name, zc)
            for name in sorted(pending):
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                if remaining_ms <= 0:
                    break
                info = ServiceInfo(SERVICE_TYPE, name)
                if not info.request(pending[name], min(remaining_ms, _RESOLVE_MS)):
                    log.debug("zmesh service %s did not resolve yet", name)
                    continue
                del pending[name]
                try:
                    broker = broker_from_service_info(info, networks)
                except ValueError as exc:
                    _bad.warning(name, "ignoring zeroconf service %r: %s", name, exc)
                    continue
                if accept is not None and not accept(broker):
                    others[name] = broker
                    continue
                found[name] = broker
                if settle_until is None:
                    settle_until = time.monotonic() + settle
    finally:
        for browser in browsers:
            browser.cancel()
        for zc in zcs:
            zc.close()
    order = lambda b: (b.mesh, b.broker_id, b.host, b.port)  # noqa: E731
    return Browse(sorted(found.values(), key=order), sorted(others.values(), key=order), chosen)


def browse(timeout: float = 2.0, *, interfaces: list[str] | None = None) -> list[BrokerInfo]:
    """Every broker (of every mesh) that answered within ``timeout`` seconds.

    Returns ``BROWSE_SETTLE_S`` seconds after the first broker resolves instead of waiting the
    whole timeout: brokers answer the same multicast query together, so later ones are rare
    and a CLI listing should not sit idle. An empty list means nobody answered.
    """
    return collect(timeout, interfaces).brokers


def unreachable(mesh: str, timeout: float, seen: Browse, broker_id: str | None = None) -> Unreachable:
    """No broker of ``mesh`` answered: the error, naming the meshes that did answer."""
    which = f"zmesh broker of mesh '{mesh}'" + (f" with id {broker_id}" if broker_id is not None else "")
    others = sorted({b.mesh for b in seen.others})
    heard = f" (brokers of mesh {', '.join(repr(m) for m in others)} answered)" if others else ""
    return Unreachable(
        f"no {which} answered on the LAN within {float(timeout)} s (zeroconf {SERVICE_TYPE}){heard}; "
        "pass --broker or set ZMESH_BROKER",
        {"timeout": float(timeout), "service_type": SERVICE_TYPE, "interfaces": seen.interfaces,
         "mesh": mesh, "broker_id": broker_id, "other_meshes": others},
    )


def discover(
    timeout: float = 3.0,
    *,
    interfaces: list[str] | None = None,
    broker_id: str | None = None,
    mesh: str | None = None,
) -> BrokerInfo:
    """The broker of ``mesh`` (default: $ZMESH_MESH, else ``default``; with ``broker_id``
    if given). Two brokers of one mesh: the lowest broker id, with a warning (record.pick).
    Raises Unreachable when none answers in time, naming the ways to skip discovery.

    This is the plain lookup, with no key pinning: a client checks the key it finds
    (trust.find_broker)."""
    mesh = resolve_mesh(mesh)
    seen = collect(timeout, interfaces, settle=DISCOVER_SETTLE_S,
                   accept=lambda b: b.mesh == mesh and (broker_id is None or b.broker_id == broker_id))
    if not seen.brokers:
        raise unreachable(mesh, timeout, seen, broker_id)
    return pick(seen.brokers, mesh)
