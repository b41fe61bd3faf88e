"""What the harness measures: a *system* is a server it starts and stops by PID, plus the
client objects worker processes build from the system's JSON-able ``info``.

Every system states its durability in words next to every figure, so no comparison hides
a missing fsync. Peers (etcd, Redis, NATS) live in bench/peers.py and follow the same shape.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import zmq

from zmesh.testing import free_port, ping

ROOT = Path(__file__).resolve().parent.parent


class ClaimClient(Protocol):
    def claim(self, key: str, ttl: float) -> bool:
        """Create-if-absent with a TTL; True when this client won the key."""
        ...

    def close(self) -> None: ...


class Publisher(Protocol):
    def publish(self, payload: bytes) -> None: ...

    def close(self) -> None: ...


class Subscriber(Protocol):
    def recv(self, timeout: float) -> bytes | None:
        """The next payload, or None after ``timeout`` seconds."""
        ...

    def close(self) -> None: ...


# ------------------------------------------------------------------ processes
@dataclass
class Server:
    """A server process started by the harness and stopped by its PID."""

    cmd: list[str]
    log: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None

    def start(self, ready: Callable[[], bool], timeout: float = 30.0) -> "Server":
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env, cwd=str(ROOT))
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.cmd[0]} exited with {self.proc.returncode}: "
                                   f"{self.log.read_text(errors='replace')[-1500:]}")
            if ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.cmd[0]} not ready within {timeout} s")

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(15)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


# ------------------------------------------------------------------ systems
@dataclass
class System:
    """Base: ``start`` returns the info clients need; ``stop`` stops every process by PID."""

    name: str
    durability: str
    kinds: frozenset[str] = frozenset({"claim"})
    servers: list[Server] = field(default_factory=list)
    version: str = ""

    def start(self, workdir: Path) -> dict[str, Any]:
        raise NotImplementedError

    def prepare(self, info: dict[str, Any], keys: list[str]) -> None:
        """Untimed setup before a claim workload (zmesh creates the tasks to claim)."""

    def stop(self) -> None:
        for s in reversed(self.servers):
            s.stop()
        self.servers = []

    @property
    def pid(self) -> int | None:
        return self.servers[0].pid if self.servers else None


@dataclass
class ZmeshSystem(System):
    level: str = "full"
    extra: tuple[str, ...] = ()
    #: CurveZMQ on (``zmesh broker --secure``): the harness makes the broker's key pair and
    #: one client key on its allow-list; every bench client of this system uses that key
    secure: bool = False
    #: ZMESH_* settings for the broker process (e.g. {"ZMESH_AUDIT": "off"})
    settings: dict[str, str] = field(default_factory=dict)
    #: serve metrics (``--metrics``) and scrape them once a second while the system is up,
    #: as a Prometheus server would (more often than its usual 15 s: the cost shows)
    scrape: bool = False

    def start(self, workdir: Path) -> dict[str, Any]:
        import zmesh

        self.version = zmesh.__version__
        port, pub = free_port(), free_port()
        data = workdir / f"zmesh-{self.level}"
        ep = f"tcp://127.0.0.1:{port}"
        keys: dict[str, str] = {}
        extra = list(self.extra)
        if self.secure:
            from zmesh.transport.keys import keygen

            broker_public, _ = keygen(data / "keys", "broker", force=True)
            client_public, client_secret = keygen(workdir / "client-keys", "bench", force=True)
            (data / "keys" / "authorized").mkdir(parents=True, exist_ok=True)
            (data / "keys" / "authorized" / client_public.name).write_bytes(client_public.read_bytes())
            keys = {"server_key": str(broker_public), "key": str(client_secret)}
            extra.append("--secure")
        metrics = ""
        if self.scrape:
            metrics = f"127.0.0.1:{free_port()}"
            extra += ["--metrics", metrics]
        cmd = [sys.executable, "-m", "zmesh", "broker", "--data", str(data), "--bind", ep,
               "--pub-bind", f"tcp://127.0.0.1:{pub}", "--no-discovery", "--durability", self.level,
               "--ttl", "60", *extra]
        options = curve_sockopts(keys)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZMESH_")}
        env.update(self.settings)
        self.servers.append(Server(cmd, workdir / f"zmesh-{self.level}.log", env).start(
            lambda: ping(ep, 0.2, options) is not None))
        if metrics:
            self._scraper = Scraper(f"http://{metrics}/metrics").start()
        return {"kind": "zmesh", "endpoint": ep, "pub": f"tcp://127.0.0.1:{pub}", "data": str(data), **keys}

    def stop(self) -> None:
        scraper = getattr(self, "_scraper", None)
        if scraper is not None:
            scraper.stop()
            self._scraper = None
        super().stop()

    def prepare(self, info: dict[str, Any], keys: list[str]) -> None:
        create_tasks(info["endpoint"], keys, info)


class Scraper:
    """GET a metrics URL once a second in a thread, as a Prometheus server would; a failed
    scrape is counted (the report shows it), never hidden."""

    def __init__(self, url: str, interval: float = 1.0) -> None:
        self.url, self.interval = url, interval
        self.done = threading.Event()
        self.scrapes = self.failures = 0
        self.thread = threading.Thread(target=self._run, name="bench-scraper", daemon=True)

    def start(self) -> "Scraper":
        self.thread.start()
        return self

    def _run(self) -> None:
        import urllib.request

        while not self.done.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    r.read()
                self.scrapes += 1
            except OSError:
                self.failures += 1

    def stop(self) -> None:
        self.done.set()
        self.thread.join(10)
        if self.failures:
            print(f"bench: {self.failures} of {self.scrapes + self.failures} metric scrapes of {self.url} failed")


def curve(info: dict[str, Any]) -> dict[str, str]:
    """The Client arguments for a secure zmesh system ({} when security is off)."""
    return {k: info[k] for k in ("server_key", "key") if k in info}


def curve_sockopts(info: dict[str, Any]) -> tuple[tuple[int, Any], ...]:
    """The socket options of a CURVE client of a secure zmesh system (() when off)."""
    from zmesh.client._protocol import curve_options

    args = curve(info)
    return curve_options(args["server_key"], args["key"]) if args else ()


def create_tasks(endpoint: str, keys: list[str], info: dict[str, Any] | None = None) -> None:
    """Create tasks fast: many requests in flight on one DEALER (group commit batches them)."""
    from zmesh import protocol

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for option, value in curve_sockopts(info or {}):
        sock.setsockopt(option, value)
    sock.connect(endpoint)
    prefix = uuid.uuid4().bytes  # request ids are unique per request (retries reuse them)
    try:
        window, sent, done = 2000, 0, 0
        while done < len(keys):
            while sent < len(keys) and sent - done < window:
                sock.send_multipart(protocol.encode_request(prefix + b"%d" % sent, "task_create",
                                                            {"id": keys[sent]}))
                sent += 1
            if not sock.poll(30_000):
                raise RuntimeError("broker stopped answering task_create")
            reply = protocol.decode_reply(sock.recv_multipart())
            if not reply.ok and reply.body.get("code") != "conflict":
                raise RuntimeError(f"task_create failed: {reply.body}")
            done += 1
    finally:
        sock.close(0)


@dataclass
class ProbeSystem(System):
    """The raw pyzmq (+ LMDB) probe: the floor zmesh's figures are divided by."""

    mode: str = "echo"
    level: str = "none"

    def start(self, workdir: Path) -> dict[str, Any]:
        import lmdb

        self.version = f"pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}, lmdb {lmdb.__version__}"
        port = free_port()
        ep = f"tcp://127.0.0.1:{port}"
        data = workdir / f"probe-{self.mode}-{self.level}"
        data.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "bench.probe", "--mode", self.mode, "--bind", ep,
               "--data", str(data), "--durability", self.level]
        log = workdir / f"probe-{self.mode}-{self.level}.log"
        self.servers.append(Server(cmd, log).start(lambda: "ready" in log.read_text()))
        return {"kind": "probe", "endpoint": ep}


@dataclass
class RawPubSub(System):
    """Raw pyzmq PUB/SUB: the publisher binds in the harness's publisher process."""

    def start(self, workdir: Path) -> dict[str, Any]:
        self.version = f"pyzmq {zmq.__version__}"
        return {"kind": "rawpub", "endpoint": f"tcp://127.0.0.1:{free_port()}"}


class RawPush(System):
    """Raw pyzmq ROUTER -> DEALER: the ROUTER binds in the harness (bench/messages.py)."""

    def start(self, workdir: Path) -> dict[str, Any]:
        self.version = f"pyzmq {zmq.__version__}"
        return {"kind": "rawpush"}


# ------------------------------------------------------------------ clients (worker side)
class ZmeshClaim:
    def __init__(self, info: dict[str, Any], agent: str) -> None:
        from zmesh import Client

        self.client = Client(info["endpoint"], agent=agent, ttl=60, timeout=30, **curve(info)).connect()

    def claim(self, key: str, ttl: float) -> bool:
        return self.client.claim(key, ttl=ttl) is not None

    def close(self) -> None:
        self.client.close(unregister=False)


class ProbeClaim:
    def __init__(self, info: dict[str, Any], agent: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(info["endpoint"])

    def claim(self, key: str, ttl: float) -> bool:
        self.sock.send_multipart([key.encode()])
        if not self.sock.poll(30_000):
            raise TimeoutError("probe did not answer")
        return self.sock.recv_multipart()[-1] == b"1"

    def close(self) -> None:
        self.sock.close(0)


class ZmeshPublisher:
    """``Client.publish``: the message (send time + padding, ~200 B) is sequenced, kept in
    the event log and published after the commit; subscribers get it through the real
    client's event iterator (gap detection and replay included)."""

    def __init__(self, info: dict[str, Any]) -> None:
        from zmesh import Client

        self.client = Client(info["endpoint"], timeout=30, **curve(info)).connect()

    def publish(self, payload: bytes) -> None:
        self.client.publish("bench", payload[:8].hex() + payload[8:].decode("latin-1"))

    def close(self) -> None:
        self.client.close()


class ZmeshSubscriber:
    def __init__(self, info: dict[str, Any]) -> None:
        from zmesh import Client

        self.client = Client(info["endpoint"], timeout=30, **curve(info)).connect()
        self.client.hello()
        self.events = self.client.events(["msg.bench"], timeout=5.0)

    def recv(self, timeout: float) -> bytes | None:
        # the real client iterator: gap detection and replay included; it ends after 5 s quiet
        ev = next(self.events, None)
        return None if ev is None else bytes.fromhex(ev.body["data"][:16])

    def close(self) -> None:
        self.events.close()
        self.client.close()


class RawPublisher:
    def __init__(self, info: dict[str, Any]) -> None:
        self.sock = zmq.Context.instance().socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.bind(info["endpoint"])

    def publish(self, payload: bytes) -> None:
        self.sock.send_multipart([b"bench", payload])

    def close(self) -> None:
        self.sock.close(0)


class RawSubscriber:
    def __init__(self, info: dict[str, Any]) -> None:
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(info["endpoint"])

    def recv(self, timeout: float) -> bytes | None:
        if not self.sock.poll(timeout * 1000):
            return None
        return self.sock.recv_multipart()[-1]

    def close(self) -> None:
        self.sock.close(0)


#: system kind -> (claim client, publisher, subscriber) classes; peers.CLIENTS adds theirs
CLIENTS: dict[str, tuple[Any, Any, Any]] = {
    "zmesh": (ZmeshClaim, ZmeshPublisher, ZmeshSubscriber),
    "probe": (ProbeClaim, None, None),
    "rawpub": (None, RawPublisher, RawSubscriber),
}


def _client_class(info: dict[str, Any], slot: int) -> Any:
    table = CLIENTS
    if info["kind"] not in table:
        from . import peers

        table = peers.CLIENTS
    cls = table.get(info["kind"], (None, None, None))[slot]
    if cls is None:
        raise ValueError(f"system kind {info['kind']!r} has no {('claim', 'publisher', 'subscriber')[slot]} client")
    return cls


def claim_client(info: dict[str, Any], agent: str) -> ClaimClient:
    return _client_class(info, 0)(info, agent)


def publisher(info: dict[str, Any]) -> Publisher:
    return _client_class(info, 1)(info)


def subscriber(info: dict[str, Any]) -> Subscriber:
    return _client_class(info, 2)(info)
