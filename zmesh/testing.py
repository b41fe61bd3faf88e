"""Run a real broker process for tests and benchmarks, and stop it by PID.

``run_broker(data_dir)`` starts ``python -m zmesh broker`` on free loopback ports with
discovery off, waits until it answers ``hello``, and always stops it on exit (SIGTERM,
then SIGKILL). ``kill()`` is the fault injection: SIGKILL, as a crash would.
"""

from __future__ import annotations

import os
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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ping(endpoint: str, timeout: float = 0.5, options: Sequence[tuple[int, Any]] = ()) -> dict | None:
    """hello over a throwaway DEALER (``options``: CURVE client options for a secure
    broker); None if no answer within ``timeout``."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for option, value in options:
        sock.setsockopt(option, value)
    try:
        sock.connect(endpoint)
        sock.send_multipart(protocol.encode_request(b"ping", "hello"))
        if not sock.poll(timeout * 1000):
            return None
        reply = protocol.decode_reply(sock.recv_multipart())
        return reply.body if reply.ok else None
    finally:
        sock.close(0)


@dataclass
class BrokerProcess:
    data: Path
    durability: str = "full"
    extra: Sequence[str] = ()
    port: int = field(default_factory=free_port)
    pub_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    #: CURVE client options the readiness ping uses (a secure broker answers nothing else)
    curve: Sequence[tuple[int, Any]] = ()

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
        self.log_path = self.data.parent / f"{self.data.name}-broker.log"
        log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
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
