"""systemd's readiness protocol (sd_notify), for a broker run as a ``Type=notify`` service.

Rules it keeps:

* It does something only when systemd asked for it: ``NOTIFY_SOCKET`` is set (systemd sets
  it for ``Type=notify`` units). Elsewhere every call is a no-op that returns False.
* It never fails the caller: a socket that cannot be reached is logged at debug level and
  the broker goes on (readiness is a courtesy to the supervisor, not a condition to serve).
* The protocol is one datagram of ``KEY=VALUE`` lines to a unix socket (an abstract one
  when the path starts with ``@``), as sd_notify(3) specifies; ten lines, so no dependency.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("zmesh.sd_notify")


def notify(*lines: str) -> bool:
    """Send ``lines`` (e.g. ``"READY=1"``, ``"STATUS=serving"``) to systemd; True if sent."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
        return True
    except OSError as exc:
        log.debug("sd_notify to %s failed: %s", path, exc)
        return False
