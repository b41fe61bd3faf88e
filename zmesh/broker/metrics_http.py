"""The broker's HTTP endpoint: ``GET /metrics`` (Prometheus text format) and ``GET /health`` (JSON).

Rules it keeps:

* The HTTP threads never read the core, the store or the loop's counters. A request asks
  the loop for a :class:`~zmesh.broker.metrics.Snapshot` (:class:`Asks`): it wakes the loop (the
  broker's wake socket) and waits at most :data:`ANSWER_TIMEOUT_S`; the loop takes the
  snapshot in its own thread, between two passes. Concurrent requests share one snapshot.
* No answer in time: ``/metrics`` is 503 and ``/health`` is 503 saying the loop is not
  answering (a broker that is stuck, or still recovering, is not healthy).
* The exposition format, the metric types and their text are prometheus_client's
  (``generate_latest`` over a registry of our own holding one custom collector); the
  names and what they mean are zmesh/broker/metrics.py's.
* With a token (the ``metrics_token`` setting: a file of mode 0600), ``GET /metrics``
  needs ``Authorization: Bearer TOKEN`` (compared in constant time); without it, or with
  another, the answer is 401 with ``WWW-Authenticate: Bearer`` and a rate-limited warning
  names the peer. ``/health`` stays open: load balancers and systemd probes ask it, and it
  holds no task, agent or message data.
* ``GET /metrics`` and ``GET /health`` only: another path is 404, another method 405.
  Request threads are daemons with a socket timeout, so a slow client holds nothing.
* The address is ``HOST:PORT`` (an IPv4 address, a bracketed IPv6 address or a host name;
  port 0..65535, 0: any free one), checked where it enters (config, ``--metrics``); a
  bind that fails raises OSError naming the address, which the broker's start turns into
  a bind error (exit 1), as for a taken ROUTER port.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable, Iterator

import orjson

from ..util.logs import RateLimited
from ..errors import InvalidArgument

if TYPE_CHECKING:
    from .metrics import Snapshot

log = logging.getLogger("zmesh.broker")
_refused = RateLimited(log, 60.0)

#: seconds an HTTP request waits for the loop's snapshot before answering 503
ANSWER_TIMEOUT_S = 2.0
#: seconds an HTTP connection may sit idle mid-request
REQUEST_TIMEOUT_S = 10.0
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
_RULE = "HOST:PORT (an IP address, [IPv6] or a host name, and a port in 0..65535)"


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port); InvalidArgument saying what is wrong otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() or len(port) > 5 \
            or int(port) > 65535:
        raise InvalidArgument(f"{text!r} is not {_RULE}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidArgument(f"{host!r} is not an IPv6 address ({_RULE})") from None
        return host[1:-1], int(port)
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host) or host.replace(".", "").isdigit():
            raise InvalidArgument(f"{host!r} is neither an IP address nor a host name ({_RULE})") from None
    return host, int(port)


class _Ask:
    __slots__ = ("done", "snapshot")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.snapshot: Snapshot | None = None


class Asks:
    """Snapshot requests from HTTP threads, answered by the loop's thread.

    ``waiting`` is the loop's cheap question (a bool read without the lock, once per
    iteration); :meth:`answer` takes the snapshot and hands it to every asker waiting."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._lock = threading.Lock()
        self._asks: list[_Ask] = []
        self._closed = False
        self.waiting = False

    def ask(self, timeout: float = ANSWER_TIMEOUT_S) -> Snapshot | None:
        """From another thread: the loop's snapshot, or None if it did not answer in time."""
        ask = _Ask()
        with self._lock:
            if self._closed:
                return None
            self._asks.append(ask)
            self.waiting = True
        self._wake()
        if not ask.done.wait(timeout):
            with self._lock:  # given up: the loop need not take a snapshot for it
                if ask in self._asks:
                    self._asks.remove(ask)
                    self.waiting = bool(self._asks)
        return ask.snapshot

    def answer(self, take: Callable[[], Snapshot]) -> None:
        """From the loop's thread: take one snapshot for every request waiting."""
        with self._lock:
            asks, self._asks, self.waiting = self._asks, [], False
        if not asks:
            return
        try:
            snapshot: Snapshot | None = take()
        except Exception:  # a bug of ours must not stop the loop: the askers see 503
            log.exception("metrics snapshot failed")
            snapshot = None
        for ask in asks:
            ask.snapshot = snapshot
            ask.done.set()

    def close(self) -> None:
        """No more answers: whoever waits gets None at once."""
        with self._lock:
            self._closed = True
            asks, self._asks, self.waiting = self._asks, [], False
        for ask in asks:
            ask.done.set()


class Unresponsive(Exception):
    """The loop did not hand over a snapshot in time (raised inside a scrape)."""


class _Collector:
    """The registry's one collector: the families of a fresh snapshot (zmesh/broker/metrics.py)."""

    def __init__(self, asks: Asks) -> None:
        self.asks = asks

    def describe(self) -> list[Any]:
        return []  # nothing to check at registration (and no snapshot asked for then)

    def collect(self) -> Iterator[Any]:
        from .metrics import families

        snapshot = self.asks.ask()
        if snapshot is None:
            raise Unresponsive
        yield from families(snapshot)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # a restart must not wait for TIME_WAIT; two listeners still conflict

    def __init__(self, address: tuple[str, int], asks: Asks, unresponsive: Callable[[], dict[str, Any]],
                 token: str | None) -> None:
        from prometheus_client.registry import CollectorRegistry

        self.expected = None if token is None else f"Bearer {token}".encode()
        self.asks = asks
        self.unresponsive = unresponsive
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(asks))  # type: ignore[arg-type]
        super().__init__(address, _Handler)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S
    server_version = "zmesh"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._metrics()
        elif path == "/health":
            self._health()
        else:
            self._send(404, b"not found: GET /metrics or /health\n", "text/plain; charset=utf-8")

    def _metrics(self) -> None:
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        expected = self.server.expected
        if expected is not None:
            given = (self.headers.get("Authorization") or "").strip().encode("utf-8", "replace")
            if not hmac.compare_digest(given, expected):
                peer = self.client_address[0]
                _refused.warning(f"metrics:{peer}", "metrics scrape from %s refused: %s", peer,
                                 "a bearer token that is not metrics_token's" if given else "no bearer token",
                                 extra={"event": "metrics.refused", "peer": peer})
                self._send(401, b"unauthorized: GET /metrics needs 'Authorization: Bearer TOKEN' (the broker's "
                           b"metrics_token)\n", "text/plain; charset=utf-8",
                           (("WWW-Authenticate", 'Bearer realm="zmesh metrics"'),))
                return
        try:
            body = generate_latest(self.server.registry)
        except Unresponsive:
            self._send(503, f"the broker loop did not answer within {ANSWER_TIMEOUT_S:g} s\n".encode(),
                       "text/plain; charset=utf-8")
            return
        self._send(200, body, CONTENT_TYPE_LATEST)

    def _health(self) -> None:
        snapshot = self.server.asks.ask()
        report = self.server.unresponsive() if snapshot is None else snapshot.health
        self._send(200 if report["healthy"] else 503, orjson.dumps(report) + b"\n", "application/json")

    def _refuse(self) -> None:
        self.send_response(405)
        self.send_header("Allow", "GET")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _refuse

    def _send(self, status: int, body: bytes, content_type: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        for name, text in headers:
            self.send_header(name, text)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # the stdlib's signature
        if log.isEnabledFor(logging.DEBUG):
            log.debug("metrics http %s: " + format, self.address_string(), *args)


class MetricsServer:
    """The endpoint's server and its thread: :meth:`start` binds (OSError naming the
    address when it cannot) and serves; :meth:`close` stops and joins."""

    def __init__(self, address: str, asks: Asks, unresponsive: Callable[[], dict[str, Any]],
                 token: str | None = None) -> None:
        self.host, self.port = parse_address(address)
        self.token = token
        self.asks = asks
        self._unresponsive = unresponsive
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """``http://HOST:PORT`` as bound (port 0 resolved)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        shown = f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"
        try:
            family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0][0]
            cls = _Server6 if family == socket.AF_INET6 else _Server
            self._server = cls((self.host, self.port), self.asks, self._unresponsive, self.token)
        except OSError as exc:  # socket.gaierror too
            raise OSError(f"cannot bind the metrics address {shown}: {exc.strerror or exc}") from None
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="zmesh-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.asks.close()  # whoever waits for the loop answers 503 now
        if self._server is not None:
            if self._thread is not None:
                self._server.shutdown()
                self._thread.join(10)
            self._server.server_close()
            self._server = None
