"""Endpoint syntax: the one check every endpoint passes where it enters zmesh (a ``Client``
argument, ``--broker``, ``ZMESH_BROKER``, ``--bind``, a config file), so a typo is a one-line
``invalid_argument`` naming the field instead of a ``zmq.ZMQError`` from deep inside libzmq.

Rules (what libzmq accepts, minus what only surprises):

* ``tcp://HOST:PORT``: HOST is an IPv4 address, a bracketed IPv6 address (``[::1]``, a
  ``%scope`` allowed) or a DNS name; PORT is 1..65535. To bind, HOST may also be ``*`` or an
  interface name and PORT ``*`` or ``0`` (the kernel picks one).
* ``ipc://PATH``: a file system path (at most 107 bytes: the kernel's ``sun_path``) or
  ``@name`` (Linux abstract namespace).
* ``inproc://NAME``: in-process (embedding and tests).

No whitespace or control characters anywhere. No I/O and no zmq here: pure syntax.
"""

from __future__ import annotations

import ipaddress
import re

from ..errors import InvalidArgument

SCHEMES = ("tcp", "ipc", "inproc")
#: the kernel's sun_path is 108 bytes including the terminating NUL
MAX_IPC_PATH_BYTES = 107
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)"
                       r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?")
_BAD_CHARS = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
_EXPECTED = "expected tcp://HOST:PORT, ipc://PATH or inproc://NAME"


def check_endpoint(value: object, *, field: str = "endpoint", bind: bool = False) -> str:
    """Return ``value`` if it is a usable endpoint, else raise InvalidArgument naming ``field``."""
    if not isinstance(value, str):
        raise _invalid(field, value, f"must be a string ({_EXPECTED})")
    if not value:
        raise _invalid(field, value, f"is empty ({_EXPECTED})")
    if _BAD_CHARS.search(value):
        raise _invalid(field, value, "contains whitespace or control characters")
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in SCHEMES:
        raise _invalid(field, value, _EXPECTED)
    if not rest:
        raise _invalid(field, value, f"has nothing after {scheme}://")
    if scheme == "tcp":
        _check_tcp(value, rest, field, bind)
    elif scheme == "ipc" and len(rest.encode()) > MAX_IPC_PATH_BYTES:
        raise _invalid(field, value, f"ipc path is longer than {MAX_IPC_PATH_BYTES} bytes")
    return value


def _check_tcp(value: str, rest: str, field: str, bind: bool) -> None:
    host, colon, port = rest.rpartition(":")
    if not colon or not host:
        raise _invalid(field, value, "needs a host and a port (tcp://HOST:PORT)")
    if bind and port in ("*", "0"):
        pass
    elif not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _invalid(field, value, f"port {port!r} is not a number in 1..65535")
    if host.startswith("["):
        if not host.endswith("]"):
            raise _invalid(field, value, "an IPv6 host must be in brackets: tcp://[::1]:PORT")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise _invalid(field, value, f"{host} is not an IPv6 address") from None
        return
    if host == "*":
        if bind:
            return
        raise _invalid(field, value, "host * is for binding; dial a host name or address")
    if ":" in host:
        raise _invalid(field, value, "an IPv6 host must be in brackets: tcp://[::1]:PORT")
    if not _HOSTNAME.fullmatch(host):
        raise _invalid(field, value, f"{host!r} is not a host name or address")


def _invalid(field: str, value: object, why: str) -> InvalidArgument:
    shown = repr(value) if isinstance(value, str) else f"of type {type(value).__name__}"
    return InvalidArgument(f"invalid {field} {shown}: {why}",
                           {"field": field, "value": value if isinstance(value, str) else None})
