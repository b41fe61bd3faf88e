"""The peers zmesh is measured against: Redis, etcd and NATS, each started by the harness as
its own server process (127.0.0.1, a free port, a data dir under the run's workdir) and
stopped by PID, plus the worker-side clients that drive them with their usual Python library.

Why each adapter looks the way it does (facts in /work/shared/PEERS.md):

- A missing binary or client library raises :class:`PeerUnavailable`, which the harness
  reports as "skipped: <reason>". A peer is never faked or replaced by something else.
- Durability is stated per system, in words, because it differs: Redis without AOF and NATS
  KV never fsync per write, Redis ``appendfsync always`` syncs once per event-loop pass,
  etcd syncs its WAL per raft batch.
- A claim is create-if-absent with a TTL, done the idiomatic way for each peer:
  Redis ``SET key agent NX PX ttl``; etcd a txn ``create_revision(key) == 0 -> put with lease``
  through ``etcd3gw`` (the JSON gateway client: the gRPC ``etcd3`` package needs
  ``protobuf<4``, pure-Python and slow on 3.11, so it is not used); NATS ``kv.create``.
- Broadcast is the peer's own pub/sub: Redis PUBLISH/SUBSCRIBE, core NATS subjects, and for
  etcd a put watched by prefix (etcd has no pub/sub; a watch is how one is built on it).

Server side (harness process): ``RedisSystem``, ``EtcdSystem``, ``NatsSystem``,
``available_peers()``. Worker side: the classes in ``CLIENTS``, built from the JSON-able
info dict in each worker process by ``bench.systems.claim_client/publisher/subscriber``.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import importlib.util
import math
import platform
import queue
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Coroutine, TypeVar

from zmesh.testing import etcd_healthy, free_port

from .systems import Server, System, port_open

T = TypeVar("T")

HOST = "127.0.0.1"
CHANNEL = "bench"  # Redis channel and NATS subject of the broadcast workload
ETCD_MSG_KEY = b"bench/msg"  # etcd "publish" = a put on this key, watched by prefix
ETCD_PREFIX = b"bench/"
NATS_BUCKET = "claims"
DEFAULT_TTL_S = 60.0  # = bench.workloads.TTL_S; NatsSystem.prepare follows info["ttl"] if it differs
SETUP_HINT = "run bench/setup_peers.sh"


class PeerUnavailable(RuntimeError):
    """A peer cannot run here (binary or client library missing): the harness reports
    ``str(exc)`` as the reason it skipped the peer, rather than measuring something else."""


# ------------------------------------------------------------------ helpers
# nats-server is installed in /usr/sbin, which is not on every user's PATH
_EXTRA_BIN_DIRS: tuple[str, ...] = ("/usr/sbin", "/usr/bin")


def _require_binary(name: str, package: str) -> str:
    path = shutil.which(name) or next((str(Path(d) / name) for d in _EXTRA_BIN_DIRS
                                       if (Path(d) / name).exists()), None)
    if path is None:
        raise PeerUnavailable(f"{name} not found (Debian package {package}; {SETUP_HINT})")
    return path


def _require_module(module: str, dist: str) -> str:
    """Import-check the client library in the harness process, so a missing one is a skip
    reported at start() and not a crash in every worker; returns its version."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise PeerUnavailable(f"Python package {dist} not importable ({exc}; {SETUP_HINT})") from exc
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _version_output(cmd: list[str]) -> str:
    """The first line the server prints for --version (the harness records what ran)."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def _ttl_ms(ttl: float) -> int:
    return max(1, round(ttl * 1000))


# ------------------------------------------------------------------ Redis
@dataclass(init=False)
class RedisSystem(System):
    """redis-server with RDB snapshots off; AOF either off (Redis's default, not durable) or
    ``appendfsync always`` (one fdatasync per event-loop pass: a natural group commit)."""

    aof_always: bool = False

    def __init__(self, aof_always: bool = False) -> None:
        if aof_always:
            super().__init__("redis-aof-always", "fdatasync per event-loop pass (appendfsync always)",
                             frozenset({"claim", "broadcast"}))
        else:
            super().__init__("redis", "no fsync (appendonly no)", frozenset({"claim", "broadcast"}))
        self.aof_always = aof_always

    #: pub/sub messages are never written to the AOF, whatever appendfsync says
    broadcast_durability = "in memory (pub/sub is not persisted)"

    def start(self, workdir: Path) -> dict[str, Any]:
        binary = _require_binary("redis-server", "redis-server")
        lib = _require_module("redis", "redis")
        hiredis = importlib.util.find_spec("hiredis") is not None
        out = _version_output([binary, "--version"])
        m = re.search(r"v=(\S+)", out)
        self.version = (f"redis-server {m.group(1) if m else out}; redis-py {lib} "
                        f"({'with' if hiredis else 'no'} hiredis)")
        port = free_port()
        data = workdir / self.name
        data.mkdir(parents=True, exist_ok=True)
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.aof_always else ["--appendonly", "no"]
        cmd = [binary, "--port", str(port), "--bind", HOST, "--protected-mode", "yes",
               "--daemonize", "no", "--dir", str(data), "--save", "", *aof, "--logfile", ""]
        self.servers.append(Server(cmd, workdir / f"{self.name}.log").start(lambda: _redis_ping(port)))
        return {"kind": "redis", "host": HOST, "port": port, "aof_always": self.aof_always}


def _redis_ping(port: int) -> bool:
    import redis

    r = redis.Redis(host=HOST, port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        return bool(r.ping())
    except redis.RedisError:
        return False
    finally:
        r.close()


def _redis(info: dict[str, Any]) -> Any:
    import redis

    # bytes in, bytes out: payloads must come back byte-identical
    return redis.Redis(host=info["host"], port=info["port"], socket_timeout=30,
                       socket_connect_timeout=10, decode_responses=False)


class RedisClaim:
    """``SET key agent NX PX ttl_ms``: one round trip, True when this client set the key."""

    def __init__(self, info: dict[str, Any], agent: str) -> None:
        self.r = _redis(info)
        self.agent = agent.encode()
        self.r.ping()  # connect now, not inside the first timed claim

    def claim(self, key: str, ttl: float) -> bool:
        return bool(self.r.set(key, self.agent, nx=True, px=_ttl_ms(ttl)))

    def close(self) -> None:
        self.r.close()


class RedisPublisher:
    def __init__(self, info: dict[str, Any]) -> None:
        self.r = _redis(info)
        self.r.ping()

    def publish(self, payload: bytes) -> None:
        self.r.publish(CHANNEL, payload)

    def close(self) -> None:
        self.r.close()


class RedisSubscriber:
    """SUBSCRIBE, and wait for the server's confirmation before returning, because the
    harness starts publishing as soon as every subscriber is constructed (Redis pub/sub has
    no replay: a message published before the SUBSCRIBE is processed is simply not sent)."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.r = _redis(info)
        self.ps = self.r.pubsub()
        self.ps.subscribe(CHANNEL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = self.ps.get_message(timeout=0.5)
            if msg is not None and msg["type"] == "subscribe":
                return
        self.close()
        raise TimeoutError("redis did not confirm SUBSCRIBE within 10 s")

    def recv(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            msg = self.ps.get_message(ignore_subscribe_messages=True, timeout=left)
            if msg is not None and msg["type"] == "message":
                return bytes(msg["data"])

    def close(self) -> None:
        self.ps.close()
        self.r.close()


# ------------------------------------------------------------------ etcd
_ETCD_ARCHES = {"x86_64", "amd64", "aarch64", "arm64", "ppc64le", "s390x"}


@dataclass(init=False)
class EtcdSystem(System):
    """A single-member etcd: every write goes through raft and its WAL is fsynced per commit
    (raft batches concurrent proposals into one sync)."""

    def __init__(self) -> None:
        super().__init__("etcd", "WAL fsync per commit (raft batches)", frozenset({"claim", "broadcast"}))

    #: a "publish" is a put: it is committed (WAL fsync) before the watch delivers it
    broadcast_durability = "WAL fsync per put (raft batches); delivered by watch"

    def start(self, workdir: Path) -> dict[str, Any]:
        import os

        binary = _require_binary("etcd", "etcd-server")
        lib = _require_module("etcd3gw", "etcd3gw")
        self.version = (f"{_version_output([binary, '--version']).replace('etcd Version: ', 'etcd ')}; "
                        f"client etcd3gw {lib} (JSON gateway; the gRPC etcd3 client needs protobuf<4, not used)")
        port, peer = free_port(), free_port()
        data = workdir / "etcd"
        client_url, peer_url = f"http://{HOST}:{port}", f"http://{HOST}:{peer}"
        cmd = [binary, "--name", "default", "--data-dir", str(data),
               "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
               "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
               "--initial-cluster", f"default={peer_url}", "--initial-cluster-state", "new",
               "--logger", "zap", "--log-outputs", "stderr"]
        env = None
        if platform.machine().lower() not in _ETCD_ARCHES:  # etcd refuses to start elsewhere
            env = dict(os.environ, ETCD_UNSUPPORTED_ARCH=platform.machine())
        self.servers.append(Server(cmd, workdir / "etcd.log", env=env).start(lambda: etcd_healthy(f"http://{HOST}:{port}")))
        return {"kind": "etcd", "host": HOST, "port": port}


def _etcd(info: dict[str, Any]) -> Any:
    import etcd3gw

    c = etcd3gw.Etcd3Client(host=info["host"], port=info["port"], timeout=30)
    _ = c.api_path  # discover /v3/ now (one GET /version), not inside the first timed call
    return c


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


class EtcdClaim:
    """Txn ``create_revision(key) == 0`` -> ``put(key, agent, lease)`` over the JSON gateway.

    One lease per client, reused for every claim (what a real agent does: its session lease
    owns all its keys), so a claim is one HTTP round trip. The lease is not kept alive; it is
    replaced once it is older than half the TTL (never measured inside a claim that would
    otherwise hit an expired lease), so a claimed key lives between TTL/2 and TTL. etcd
    raises TTLs below its minimum (~2 s with default timings) to that minimum.
    """

    def __init__(self, info: dict[str, Any], agent: str) -> None:
        self.client = _etcd(info)
        self.agent = _b64(agent.encode())
        self.lease_id: int | None = None
        self.lease_ttl = 0.0
        self.lease_at = 0.0

    def _lease(self, ttl: float) -> int:
        now = time.monotonic()
        if self.lease_id is None or ttl != self.lease_ttl or now - self.lease_at > ttl / 2:
            self.lease_id = self.client.lease(max(1, math.ceil(ttl))).id
            self.lease_ttl, self.lease_at = ttl, now
        return self.lease_id

    def claim(self, key: str, ttl: float) -> bool:
        lease = self._lease(ttl)
        k = _b64(key.encode())
        txn = {"compare": [{"key": k, "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
               "success": [{"request_put": {"key": k, "value": self.agent, "lease": lease}}],
               "failure": []}
        return bool(self.client.transaction(txn).get("succeeded", False))

    def close(self) -> None:
        self.client.session.close()


class EtcdPublisher:
    """A put on ``bench/msg``: etcd has no pub/sub; subscribers watch the prefix."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.client = _etcd(info)

    def publish(self, payload: bytes) -> None:
        self.client.put(ETCD_MSG_KEY, payload)

    def close(self) -> None:
        self.client.session.close()


class EtcdSubscriber:
    """A watch on the ``bench/`` prefix through etcd3gw's streaming ``Watcher``.

    etcd3gw swallows the watch's "created" response, so readiness is proven end to end
    instead: this subscriber puts a probe key under the prefix until its own watch delivers
    it. Only puts on ``bench/msg`` are returned (other subscribers' probes are skipped)."""

    def __init__(self, info: dict[str, Any]) -> None:
        from etcd3gw.utils import _increment_last_byte
        from etcd3gw.watch import Watcher

        self.client = _etcd(info)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.watcher = Watcher(self.client, ETCD_PREFIX, self.events.put,
                               range_end=_increment_last_byte(ETCD_PREFIX))
        probe = ETCD_PREFIX + b"sync/" + uuid.uuid4().hex.encode()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self.client.put(probe, b"")
            until = time.monotonic() + 0.2
            while (left := until - time.monotonic()) > 0:
                try:
                    ev = self.events.get(timeout=left)
                except queue.Empty:
                    break
                if ev["kv"]["key"] == probe:
                    self.client.delete(probe)
                    return
        self.close()
        raise TimeoutError("etcd watch did not deliver its probe put within 10 s")

    def recv(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                return None
            # a PUT has no "type" in the gateway's JSON (enum default omitted); DELETE says so
            if ev["kv"]["key"] == ETCD_MSG_KEY and ev.get("type", "PUT") == "PUT":
                return bytes(ev["kv"].get("value", b""))
        return None

    def close(self) -> None:
        self.watcher.stop()
        self.client.session.close()


# ------------------------------------------------------------------ NATS
@dataclass(init=False)
class NatsSystem(System):
    """nats-server with JetStream (file store under the workdir). Claims use a KV bucket
    (``kv.create``); broadcast uses core NATS subjects, which store nothing.

    NATS 2.9 has one TTL per bucket (per-message TTLs arrived in 2.11), so the bucket's
    ``max_age`` is the claim TTL: created at start() with ``ttl`` and recreated by prepare()
    if the harness's info["ttl"] differs; a claim with any other TTL is refused."""

    ttl: float = DEFAULT_TTL_S

    def __init__(self, ttl: float = DEFAULT_TTL_S) -> None:
        super().__init__("nats-kv", "no per-write fsync (JetStream file store syncs in background)",
                         frozenset({"claim", "broadcast"}))
        self.ttl = ttl
        self._url = ""

    broadcast_durability = "in memory (core NATS pub/sub)"

    def start(self, workdir: Path) -> dict[str, Any]:
        binary = _require_binary("nats-server", "nats-server")
        lib = _require_module("nats", "nats-py")
        self.version = f"{_version_output([binary, '--version'])}; nats-py {lib} (asyncio)"
        port = free_port()
        store = workdir / "nats"
        store.mkdir(parents=True, exist_ok=True)
        cmd = [binary, "-js", "-sd", str(store), "-a", HOST, "-p", str(port), "-n", "bench"]
        self.servers.append(Server(cmd, workdir / "nats.log").start(lambda: port_open(port)))
        self._url = f"nats://{HOST}:{port}"
        # JetStream may still be initialising when the port first accepts: retry briefly
        deadline = time.monotonic() + 15
        while True:
            try:
                asyncio.run(_ensure_bucket(self._url, NATS_BUCKET, self.ttl))
                break
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.1)
        return {"kind": "nats", "url": self._url, "bucket": NATS_BUCKET, "ttl": self.ttl}

    def prepare(self, info: dict[str, Any], keys: list[str]) -> None:
        """Untimed: make the bucket's TTL the one the workload will claim with."""
        ttl = float(info.get("ttl", self.ttl))
        if ttl != self.ttl:
            asyncio.run(_ensure_bucket(info["url"], info["bucket"], ttl))
            self.ttl = ttl


async def _nats_connect(url: str) -> Any:
    import nats

    # no reconnect: a server that goes away mid-run is an error to report, not to hide
    return await nats.connect(url, connect_timeout=5, allow_reconnect=False, max_reconnect_attempts=0,
                              name="zmesh-bench")


async def _ensure_bucket(url: str, bucket: str, ttl: float) -> None:
    """Create the KV bucket (history 1, file storage, max_age = ttl), replacing one with
    another TTL."""
    from nats.js.api import StorageType
    from nats.js.errors import NotFoundError

    nc = await _nats_connect(url)
    try:
        js = nc.jetstream()
        try:
            si = await js.stream_info(f"KV_{bucket}")
            if si.config.max_age is not None and abs(si.config.max_age - ttl) < 1e-3:
                return
            await js.delete_key_value(bucket)
        except NotFoundError:
            pass
        await js.create_key_value(bucket=bucket, ttl=ttl, history=1, storage=StorageType.FILE)
    finally:
        await nc.close()


_NATS_KEY_OK = re.compile(r"[-/_a-zA-Z0-9]")


def nats_key(key: str) -> str:
    """Map any string to a valid, distinct NATS KV key.

    KV keys allow ``[-/_=.a-zA-Z0-9]`` but ``.`` separates subject tokens (no leading,
    trailing or double dots), so every byte outside ``[-/_a-zA-Z0-9]`` -- ``.`` and ``=``
    included -- becomes ``=XX`` (hex of its UTF-8 byte): injective, and identity on the
    harness's own keys (``lat-12``, ``thr16-c3-w5``)."""
    out = []
    for ch in key:
        if _NATS_KEY_OK.fullmatch(ch):
            out.append(ch)
        else:
            out.extend(f"={b:02X}" for b in ch.encode())
    return "".join(out) or "="  # "=" alone: no escape is that short


class _Loop:
    """A private asyncio loop driven by the calling thread, one ``run_until_complete`` per call.

    nats-py is asyncio-only. Running its loop in the thread that calls claim()/recv() avoids
    a thread hop per operation (a background-loop thread would add two wake-ups to every
    figure). Between calls the loop is idle; the server's 2-minute PING needs no answer
    sooner than that. One loop per client object, used by one thread at a time."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self, nc: Any) -> None:
        try:
            if nc is not None and not nc.is_closed:
                self.run(nc.close())
        finally:
            self.loop.close()


class NatsClaim:
    """``kv.create(key, agent)``: True when created, False on ``KeyWrongLastSequenceError``
    (the key exists; nats-py then makes a second round trip to rule out a deleted key)."""

    def __init__(self, info: dict[str, Any], agent: str) -> None:
        self.io = _Loop()
        self.nc: Any = None
        self.agent = agent.encode()
        try:
            self.nc = self.io.run(_nats_connect(info["url"]))
            js = self.nc.jetstream()
            self.kv = self.io.run(js.key_value(info["bucket"]))
            si = self.io.run(js.stream_info(f"KV_{info['bucket']}"))
            self.bucket_ttl = float(si.config.max_age or 0.0)
        except BaseException:
            self.io.close(self.nc)
            raise

    def claim(self, key: str, ttl: float) -> bool:
        from nats.js.errors import KeyWrongLastSequenceError

        if abs(ttl - self.bucket_ttl) > 1e-3:
            raise ValueError(f"NATS KV bucket TTL is {self.bucket_ttl} s; a claim with TTL {ttl} s "
                             "cannot be expressed (one TTL per bucket in NATS 2.9)")
        try:
            self.io.run(self.kv.create(nats_key(key), self.agent))
            return True
        except KeyWrongLastSequenceError:
            return False

    def close(self) -> None:
        self.io.close(self.nc)


class NatsPublisher:
    """Core NATS publish, then ``flush()``. nats-py queues a PUB for its flusher task, which
    only runs while this thread drives the loop; flush() keeps the loop running for a
    PING/PONG round trip, by which time the flusher has written the PUB. So nothing sits
    buffered between calls; the round trip is paid by the publisher, not by the delivery
    latency (measured from the start of publish() to the subscriber's receipt)."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.io = _Loop()
        self.nc: Any = None
        try:
            self.nc = self.io.run(_nats_connect(info["url"]))
        except BaseException:
            self.io.close(self.nc)
            raise

    async def _publish(self, payload: bytes) -> None:
        await self.nc.publish(CHANNEL, payload)
        await self.nc.flush()

    def publish(self, payload: bytes) -> None:
        self.io.run(self._publish(payload))

    def close(self) -> None:
        self.io.close(self.nc)


class NatsSubscriber:
    """SUBSCRIBE, then two ``flush()`` round trips before returning, so that no message
    published after the constructor returns can be missed.

    Why two: nats-py queues the SUB for its flusher task but writes flush()'s PING straight
    to the socket, so the first PING can overtake the SUB. While the first PONG is awaited
    the flusher writes the SUB; the second PING then follows it on the wire, and the server
    answers a connection's commands in order: its PONG proves the SUB was registered."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.io = _Loop()
        self.nc: Any = None
        try:
            self.nc = self.io.run(_nats_connect(info["url"]))
            self.sub = self.io.run(self._subscribe())
        except BaseException:
            self.io.close(self.nc)
            raise

    async def _subscribe(self) -> Any:
        sub = await self.nc.subscribe(CHANNEL)
        await self.nc.flush()
        await self.nc.flush()
        return sub

    def recv(self, timeout: float) -> bytes | None:
        import nats.errors

        try:
            msg = self.io.run(self.sub.next_msg(timeout=timeout))
        except nats.errors.TimeoutError:
            return None
        return bytes(msg.data)

    def close(self) -> None:
        self.io.close(self.nc)


# ------------------------------------------------------------------ harness entry points
def available_peers() -> list[System]:
    """Every peer, in report order. Availability is checked by start() (PeerUnavailable)."""
    return [RedisSystem(aof_always=False), RedisSystem(aof_always=True), EtcdSystem(), NatsSystem()]


#: system kind -> (claim client, publisher, subscriber), looked up by bench.systems
CLIENTS: dict[str, tuple[Any, Any, Any]] = {
    "redis": (RedisClaim, RedisPublisher, RedisSubscriber),
    "etcd": (EtcdClaim, EtcdPublisher, EtcdSubscriber),
    "nats": (NatsClaim, NatsPublisher, NatsSubscriber),
}


# ------------------------------------------------------------------ sanity check (not the harness)
def _sanity(n: int, ttl: float) -> None:
    """``python -m bench.peers [N]``: N sequential claims of fresh keys from one client per
    peer, p50/p95 in µs, to compare with PEERS.md's reference table. The harness's own
    figures come from bench/workloads.py; this only checks that the adapters are sane."""
    import statistics
    import sys
    import tempfile

    from .systems import claim_client  # here: systems imports this module

    with tempfile.TemporaryDirectory(prefix="zmesh-peers-") as tmp:
        for system in available_peers():
            try:
                info = dict(system.start(Path(tmp)), ttl=ttl)
            except PeerUnavailable as exc:
                print(f"{system.name:18} skipped: {exc}")
                continue
            try:
                system.prepare(info, [])
                c = claim_client(info, "sanity")
                for i in range(200):  # warm-up: connections, lease grant, JIT-free but caches
                    c.claim(f"w-{i}", ttl)
                lat, won = [], 0
                for i in range(n):
                    s = time.perf_counter_ns()
                    won += c.claim(f"k-{i}", ttl)
                    lat.append((time.perf_counter_ns() - s) / 1000)
                c.close()
                q = statistics.quantiles(lat, n=100, method="inclusive")
                print(f"{system.name:18} p50 {q[49]:8,.0f} µs  p95 {q[94]:8,.0f} µs  won {won}/{n}  "
                      f"[{system.durability}]  {system.version}")
                sys.stdout.flush()
            finally:
                system.stop()


if __name__ == "__main__":
    import sys

    _sanity(int(sys.argv[1]) if len(sys.argv) > 1 else 2000, DEFAULT_TTL_S)
