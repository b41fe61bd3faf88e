"""Run a real broker process for tests and benchmarks, and stop it by PID.

``run_broker(data_dir)`` starts ``python -m zmesh broker`` on free loopback ports with
discovery off, waits until it answers ``hello``, and always stops it on exit (SIGTERM,
then SIGKILL). ``kill()`` is the fault injection: SIGKILL, as a crash would.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import zmq

from . import protocol


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
