"""Run a real broker process, or a real etcd cluster, for tests and benchmarks, and stop
each by PID.

``run_broker(data_dir)`` starts ``python -m zmesh broker`` on free loopback ports with
discovery off, waits until it answers ``hello``, and always stops it on exit (SIGTERM,
then SIGKILL). ``kill()`` is the fault injection: SIGKILL, as a crash would.

``EtcdCluster(workdir, size=3).start()`` runs ``size`` etcd members (the Debian package's
``etcd`` binary) on free 127.0.0.1 ports, each with its own data dir under ``workdir``, and
waits until every member answers ``/health`` and the cluster has a leader. Its faults:
``kill(i)`` (SIGKILL), ``pause(i)`` / ``resume(i)`` (SIGSTOP / SIGCONT), ``restart(i)``
(the same member and data dir again), ``leader()`` (which member leads, from etcd's own
status). ``stop()`` ends every member by PID and is always safe to call.

Rules they keep: loopback only, ports chosen free at run time, nothing written outside the
directory given; a process that does not come up fails the start with its log's tail.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import zmq

from . import protocol

_HOST = "127.0.0.1"

#: where free_port looks when the kernel's ephemeral range leaves room below it: a port the
#: kernel hands out for bind(0) is also one it hands out as the local end of an outgoing
#: connection, so a broker told to bind it later can find it taken by some client's socket
_LOW_PORTS = (20000, 32767)
_rng = random.SystemRandom()  # not the global one, which hypothesis seeds


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, outside the kernel's ephemeral range when
    there is room (so no outgoing connection takes it before the broker binds it); the
    kernel picks one when there is not."""
    low, high = _LOW_PORTS
    eph_low, eph_high = _ephemeral_range()
    if not (eph_low <= high and low <= eph_high):
        for _ in range(64):
            port = _rng.randint(low, high)
            if _bindable(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ping(endpoint: str, timeout: float = 0.5, options: Sequence[tuple[int, Any]] = ()) -> dict | None:
    """hello over a throwaway DEALER (``options``: CURVE client options for a secure
    broker); None if no answer within ``timeout``."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for option, value in options:
        sock.setsockopt(option, value)
    try:
        sock.connect(endpoint)
        sock.send_multipart(protocol.encode_request(b"ping", "hello"))
        if not sock.poll(int(timeout * 1000)):
            return None
        reply = protocol.decode_reply(sock.recv_multipart())
        return reply.body if reply.ok else None
    finally:
        sock.close(0)


class _PortTaken(RuntimeError):
    """The broker exited because a port it was told to bind was taken."""


@dataclass
class BrokerProcess:
    data: Path
    durability: str = "full"
    extra: Sequence[str] = ()
    #: 0: pick free ports, and pick again if the broker finds one taken after all
    port: int = 0
    pub_port: int = 0
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    #: CURVE client options the readiness ping uses (a secure broker answers nothing else)
    curve: Sequence[tuple[int, Any]] = ()
    _picked: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if not self.port and not self.pub_port:
            self._picked = True
            self._pick_ports()
        elif not self.port or not self.pub_port:
            raise ValueError("give both port and pub_port, or neither")

    def _pick_ports(self) -> None:
        self.port = free_port()
        self.pub_port = free_port()
        while self.pub_port == self.port:
            self.pub_port = free_port()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def pub_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.pub_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        return [sys.executable, "-m", "zmesh", "broker", "--data", str(self.data),
                "--bind", self.endpoint, "--pub-bind", self.pub_endpoint, "--no-discovery",
                "--durability", self.durability, *self.extra]

    def start(self, timeout: float = 20.0) -> "BrokerProcess":
        """Start and wait for ``hello``. A port taken between the pick and the bind (another
        process got it first: the pick is only a probe) is picked again, a few times, when
        this object picked it; a port the caller gave is the caller's to keep free."""
        for _ in range(4):
            try:
                return self._start_once(timeout)
            except _PortTaken:
                if not self._picked:
                    raise
                self._pick_ports()
        return self._start_once(timeout)

    def _start_once(self, timeout: float) -> "BrokerProcess":
        self.log_path = self.data.parent / f"{self.data.name}-broker.log"
        log = open(self.log_path, "ab")
        since = log.tell()  # the log is appended to: judge this start by its own lines
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                own = self.log_path.read_bytes()[since:].decode(errors="replace")
                if "cannot bind" in own and "Address already in use" in own:
                    raise _PortTaken(own)
                raise RuntimeError(f"broker exited with {self.proc.returncode}:\n{self.log()}")
            if ping(self.endpoint, 0.2, self.curve) is not None:
                return self
        self.kill()
        raise RuntimeError(f"broker did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL, as a crash would; waits for the process to be gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextmanager
def run_broker(data: str | os.PathLike[str], *, durability: str = "full",
               extra: Sequence[str] = ()) -> Iterator[BrokerProcess]:
    broker = BrokerProcess(Path(data), durability, tuple(extra))
    try:
        yield broker.start()
    finally:
        broker.stop()
        broker.kill()


# ------------------------------------------------------------------ an etcd cluster
#: etcd refuses to start on other architectures unless told to (ETCD_UNSUPPORTED_ARCH)
_ETCD_ARCHES = {"x86_64", "amd64", "aarch64", "arm64", "ppc64le", "s390x"}


def etcd_binary() -> str | None:
    """The etcd server binary on PATH (Debian: ``apt-get install etcd-server``), or None."""
    return shutil.which("etcd")


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{_HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{_HOST}:{self.peer_port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class EtcdCluster:
    workdir: Path
    size: int = 3
    members: list[EtcdMember] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be at least 1, got {self.size}")
        self.workdir = Path(self.workdir)
        ports: set[int] = set()
        while len(ports) < 2 * self.size:
            ports.add(free_port())
        picked = sorted(ports)
        for i in range(self.size):
            name = f"m{i}"
            self.members.append(EtcdMember(name, picked[2 * i], picked[2 * i + 1], self.workdir / name,
                                       self.workdir / f"{name}.log"))

    # ------------------------------------------------------------------ endpoints
    @property
    def endpoints(self) -> list[str]:
        """Every member's client URL (``http://127.0.0.1:port``)."""
        return [m.url for m in self.members]

    @property
    def store_url(self) -> str:
        """The cluster as zmesh's ``--store`` names it: ``etcd://h1:p1,h2:p2,...``."""
        return "etcd://" + ",".join(f"{_HOST}:{m.client_port}" for m in self.members)

    # ------------------------------------------------------------------ life
    def _command(self, m: EtcdMember, state: str) -> list[str]:
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError("etcd is not installed (Debian: apt-get install etcd-server)")
        initial = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        return [binary, "--name", m.name, "--data-dir", str(m.data),
                "--listen-client-urls", m.url, "--advertise-client-urls", m.url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", initial, "--initial-cluster-state", state,
                "--initial-cluster-token", f"zmesh-test-{os.getpid()}-{self.members[0].client_port}",
                "--logger", "zap", "--log-outputs", "stderr"]

    def _spawn(self, m: EtcdMember, state: str) -> None:
        env = dict(os.environ)
        if platform.machine().lower() not in _ETCD_ARCHES:
            env["ETCD_UNSUPPORTED_ARCH"] = platform.machine()
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(m.log, "ab") as log:
            m.proc = subprocess.Popen(self._command(m, state), stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env)

    def start(self, timeout: float = 30.0) -> "EtcdCluster":
        for m in self.members:
            self._spawn(m, "new")
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 30.0, members: list[int] | None = None) -> None:
        """Until every running member (or those named) is healthy and one of them leads."""
        deadline = time.monotonic() + timeout
        chosen = [self.members[i] for i in (members if members is not None else range(self.size))]
        while time.monotonic() < deadline:
            for m in chosen:
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError(f"etcd member {m.name} exited with {m.proc.returncode}:\n{self.log(m)}")
            if all(etcd_healthy(m.url) for m in chosen if m.running()) and self.leader() is not None:
                return
            time.sleep(0.05)  # a poll of a condition, not a wait that hides a race
        raise RuntimeError("etcd cluster not ready within %.0f s:\n%s" % (
            timeout, "\n".join(f"--- {m.name}\n{self.log(m)}" for m in chosen)))

    def log(self, m: EtcdMember, tail: int = 3000) -> str:
        return m.log.read_text(errors="replace")[-tail:] if m.log.exists() else ""

    def stop(self) -> None:
        """Every member, by PID: SIGTERM, then SIGKILL if it lingers (a paused one too)."""
        for m in self.members:
            if m.running():
                assert m.proc is not None
                m.proc.send_signal(signal.SIGCONT)
                m.proc.terminate()
        for m in self.members:
            if m.proc is not None:
                try:
                    m.proc.wait(10)
                except subprocess.TimeoutExpired:
                    m.proc.kill()
                    m.proc.wait(10)

    def __enter__(self) -> "EtcdCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ faults
    def kill(self, i: int) -> None:
        """SIGKILL member ``i``, as a crash would; waits until it is gone."""
        m = self.members[i]
        if m.running():
            assert m.proc is not None
            m.proc.kill()
            m.proc.wait(10)

    def pause(self, i: int) -> None:
        proc = self.members[i].proc
        if proc is not None:
            proc.send_signal(signal.SIGSTOP)

    def resume(self, i: int) -> None:
        proc = self.members[i].proc
        if proc is not None:
            proc.send_signal(signal.SIGCONT)

    def restart(self, i: int, timeout: float = 30.0) -> None:
        """Member ``i`` again on its own data dir (after :meth:`kill`)."""
        m = self.members[i]
        if m.running():
            raise RuntimeError(f"etcd member {m.name} is still running")
        self._spawn(m, "existing")
        self.wait_ready(timeout)

    # ------------------------------------------------------------------ state
    def status(self, i: int) -> dict[str, Any] | None:
        """Member ``i``'s ``/v3/maintenance/status`` (its id, the leader's id, raft term), or
        None when it does not answer."""
        return _etcd_post(self.members[i].url, "/v3/maintenance/status", {})

    def leader(self) -> int | None:
        """Which member leads now (by index), as the running members report it; None when
        none reports a leader that is running."""
        ids: dict[str, int] = {}
        leader_id = None
        for i, m in enumerate(self.members):
            if not m.running():
                continue
            st = self.status(i)
            if st is None:
                continue
            ids[str(st["header"]["member_id"])] = i
            if st.get("leader") not in (None, "0"):
                leader_id = str(st["leader"])
        return ids.get(leader_id) if leader_id is not None else None

    def get(self, key: bytes) -> bytes | None:
        """A key's value through the first member that answers (checks in tests)."""
        for m in self.members:
            if not m.running():
                continue
            out = _etcd_post(m.url, "/v3/kv/range", {"key": base64.b64encode(key).decode()})
            if out is not None:
                kvs = out.get("kvs") or []
                return base64.b64decode(kvs[0]["value"]) if kvs and "value" in kvs[0] else (b"" if kvs else None)
        raise RuntimeError("no etcd member answered")


def etcd_healthy(url: str) -> bool:
    """Does the etcd member at ``url`` (http://host:port) answer healthy on /health?"""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=0.5) as resp:
            return json.loads(resp.read()).get("health") == "true"
    except (OSError, ValueError):
        return False


def _etcd_post(url: str, path: str, body: dict[str, Any], timeout: float = 1.0) -> dict[str, Any] | None:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            out: dict[str, Any] = json.loads(resp.read())
            return out
    except (OSError, ValueError):
        return None
