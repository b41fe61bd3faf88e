"""Find zmesh brokers on the LAN with zeroconf (mDNS / DNS-SD), so agents need no
configuration, and join only the one that should be joined.

Rules it keeps (each module keeps its part):

* **The record** (record.py): a broker advertises ``_zmesh._tcp.local.`` with TXT ``id``,
  ``pub``, ``proto`` (``"1"``), ``version``, ``mesh`` and, when secure, ``key`` (its CurveZMQ
  public key). A record from the LAN is parsed strictly; a bad one is skipped with a
  rate-limited log line, never a crash.
* **Meshes**: several meshes share one LAN and stay apart; a client joins only brokers of
  its mesh (argument, else ``$ZMESH_MESH``, else ``default``).
* **Two brokers for one mesh**: every client joins the one with the lowest broker id (then
  the lowest endpoint), whatever order the answers came in, and logs a warning naming them
  all (record.pick). The browser listens 0.15 s past the first answer so it sees them.
* **Pinning** (trust.py, known_hosts.py): a broker's key is checked against
  ``ZMESH_SERVER_KEY``, else against the key pinned for the mesh on first use in the
  known-hosts file; another key (or none) is refused naming both fingerprints.
* **Following** (the clients): a client made by discovery that loses its broker looks for
  its mesh again and moves to the new endpoint under the same pin; a client given an
  endpoint never moves.
* **On the wire** (mdns.py): one interface by default (the default route's; interfaces.py),
  every zeroconf instance closed before its call returns, a goodbye on unregister.

``from zmesh.discovery import ...`` keeps working for every name below (each is loaded on
first use: importing the package does not import zeroconf).
"""

from __future__ import annotations

import importlib
from typing import Any

#: name -> the module that defines it; loaded on first use, so a client that never
#: discovers (or the CLI starting) does not import zeroconf
_WHERE = {
    "default_interfaces": ".interfaces",
    **dict.fromkeys(("ENV_KNOWN_HOSTS", "KnownHosts", "Pinned", "default_known_hosts", "known_hosts_file"),
                    ".known_hosts"),
    **dict.fromkeys(("Advertiser", "Browse", "broker_from_service_info", "browse", "collect", "discover"), ".mdns"),
    **dict.fromkeys(("PROTO", "SERVICE_TYPE", "BrokerInfo", "parse_service", "pick", "txt_properties"), ".record"),
    **dict.fromkeys(("Pin", "Trust", "decide", "find_broker"), ".trust"),
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "SERVICE_TYPE",
    "PROTO",
    "BrokerInfo",
    "Advertiser",
    "Browse",
    "browse",
    "collect",
    "discover",
    "default_interfaces",
    "parse_service",
    "broker_from_service_info",
    "txt_properties",
    "pick",
    "ENV_KNOWN_HOSTS",
    "KnownHosts",
    "Pinned",
    "default_known_hosts",
    "known_hosts_file",
    "Pin",
    "Trust",
    "decide",
    "find_broker",
]
