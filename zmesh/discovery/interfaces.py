"""Which network interfaces zeroconf discovery runs on (see discovery.py's design notes).

Rules it keeps:

* By default only the IPv4 address(es) of the interface holding the IPv4 default route
  (lowest metric), read from ``/proc/net/route`` and the interface list (``ifaddr``): no
  packet is sent to find it. Without a default route, every IPv4 address, loopback last.
* ``ZMESH_INTERFACES`` (comma-separated addresses or interface names) or an explicit
  ``interfaces`` argument overrides the choice; a name that has no IPv4 address, or an
  empty explicit list, is a ValueError naming where it came from.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import ifaddr

__all__ = ["ENV_INTERFACES", "choose_interfaces", "default_interfaces", "default_route_interface",
           "local_networks"]

log = logging.getLogger("zmesh.interfaces")

ENV_INTERFACES = "ZMESH_INTERFACES"
#: the kernel's IPv4 routing table (tests point it at a file of their own)
PROC_NET_ROUTE = "/proc/net/route"
_RTF_UP = 0x0001

def _parse_hex_le(field: str) -> int:
    return int(field, 16)


def default_route_interface(route_table: str) -> str | None:
    """Name of the interface of the IPv4 default route with the lowest metric, from /proc/net/route text."""
    best: tuple[int, str] | None = None
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        iface, dest, _gateway, flags, _refcnt, _use, metric, mask = fields[:8]
        try:
            if _parse_hex_le(dest) != 0 or _parse_hex_le(mask) != 0:
                continue
            if not _parse_hex_le(flags) & _RTF_UP:
                continue
            rank = int(metric)
        except ValueError:
            continue
        if best is None or rank < best[0]:
            best = (rank, iface)
    return best[1] if best else None


def _ipv4_of(adapters: Iterable[Any], name: str | None = None) -> list[str]:
    found: list[str] = []
    for adapter in adapters:
        if name is not None and adapter.name != name:
            continue
        for ip in adapter.ips:
            if ip.is_IPv4 and ip.ip not in found:
                found.append(ip.ip)
    return found


def default_interfaces() -> list[str]:
    """IPv4 address(es) to run mDNS on when the caller did not choose.

    The default-route interface is the one that reaches the LAN on almost every host, and
    avoiding the others sidesteps python-zeroconf's trouble with Docker bridges and VPNs.
    Nothing is sent to find it. Without a default route (or if that interface has no IPv4
    address) every IPv4 address is returned, loopback last, as InterfaceChoice.All would use.
    """
    adapters = list(ifaddr.get_adapters())
    try:
        with open(PROC_NET_ROUTE, encoding="ascii", errors="replace") as fh:
            iface = default_route_interface(fh.read())
    except OSError:
        iface = None
    if iface is not None:
        addrs = _ipv4_of(adapters, iface)
        if addrs:
            return addrs
        log.debug("default-route interface %s has no IPv4 address; using all interfaces", iface)
    every = _ipv4_of(adapters)
    return sorted(every, key=lambda a: ipaddress.ip_address(a).is_loopback)


def _expand(entries: Iterable[str], source: str) -> list[str]:
    """Addresses pass through; anything else must be an interface name, replaced by its IPv4 addresses."""
    result: list[str] = []
    adapters: list[Any] | None = None
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        try:
            ipaddress.ip_address(entry)  # accepts %scope on IPv6
        except ValueError:
            if adapters is None:
                adapters = list(ifaddr.get_adapters())
            addrs = _ipv4_of(adapters, entry)
            if not addrs:
                raise ValueError(
                    f"{source}: {entry!r} is neither an IP address nor an interface with an IPv4 address"
                ) from None
            result.extend(a for a in addrs if a not in result)
        else:
            if entry not in result:
                result.append(entry)
    return result


def choose_interfaces(interfaces: Sequence[str] | None) -> tuple[list[str], bool]:
    """(addresses, explicitly chosen?) for a call's interfaces argument."""
    if interfaces is not None:
        chosen = _expand(interfaces, "interfaces")
        if not chosen:
            raise ValueError("interfaces: empty list; pass None to use the default-route interface")
        return chosen, True
    env = os.environ.get(ENV_INTERFACES, "").strip()
    if env:
        chosen = _expand(env.split(","), ENV_INTERFACES)
        if chosen:
            return chosen, True
    return default_interfaces(), False


def local_networks(addresses: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Subnets of our chosen addresses, to prefer a broker address we can reach on-link."""
    wanted = {a.partition("%")[0] for a in addresses}
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    try:
        adapters = ifaddr.get_adapters()
    except OSError:  # pragma: no cover - only a preference
        return nets
    for adapter in adapters:
        for ip in adapter.ips:
            addr = ip.ip if ip.is_IPv4 else ip.ip[0]
            if addr in wanted:
                nets.append(ipaddress.ip_network(f"{addr}/{ip.network_prefix}", strict=False))
    return nets
