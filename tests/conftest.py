"""Shared fixtures: a real broker process per test (loopback, free ports, tmp data dir),
stopped by PID at the end; helpers to poll for a condition instead of sleeping."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from zmesh import Client
from zmesh.testing import BrokerProcess, EtcdCluster, etcd_binary

from .drivers import Blocking
# every test fails when it leaves a thread or a file descriptor (a socket) behind
from .leaks import _session_singletons, no_leaks  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A real 3-member etcd cluster on loopback for a test module (zmesh.testing.EtcdCluster),
    every member stopped by PID at its end; skipped, saying why, where etcd is not installed."""
    if etcd_binary() is None:
        pytest.skip("etcd is not installed (tests/setup_etcd.sh)")
    with EtcdCluster(tmp_path_factory.mktemp("etcd"), size=3) as c:
        yield c


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    b = BrokerProcess(tmp_path / "data").start()
    try:
        yield b
    finally:
        _stop_cleanly(b)


def _stop_cleanly(b: BrokerProcess) -> None:
    """Stop by PID; a running broker that ignores SIGTERM fails the test."""
    running = b.proc is not None and b.proc.poll() is None
    code = b.stop()
    b.kill()
    if running:
        assert code == 0, f"broker did not exit cleanly on SIGTERM (code {code}):\n{b.log()[-2000:]}"


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., BrokerProcess]]:
    """Brokers with options; each is stopped by PID when the test ends."""
    started: list[BrokerProcess] = []

    def make(name: str = "data", durability: str = "full", extra: tuple[str, ...] = ()) -> BrokerProcess:
        b = BrokerProcess(tmp_path / name, durability, extra)
        started.append(b)
        return b.start()

    yield make
    for b in started:
        _stop_cleanly(b)


def wait_for(cond: Callable[[], object], timeout: float = 10.0, interval: float = 0.02,
             what: str = "condition") -> object:
    """Poll ``cond`` until it returns something truthy (never sleep and hope)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


async def until(cond: Callable[[], object], what: str, timeout: float = 15.0, interval: float = 0.02) -> object:
    """wait_for inside an event loop: poll ``cond`` without blocking the loop."""
    import anyio

    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await anyio.sleep(interval)


class Procs:
    """Child processes started by a test; every one is killed by PID at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def python(self, code: str, *args: str, **kw: object) -> subprocess.Popen:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
        p = subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)  # type: ignore[call-overload]
        self.procs.append(p)
        return p

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
            for f in (p.stdin, p.stdout, p.stderr):
                if f:
                    f.close()


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture(params=["sync", "async"])
def make_client(request: pytest.FixtureRequest) -> Iterator[Any]:
    made: list[Any] = []

    def make(*args: Any, **kw: Any) -> Any:
        c = Client(*args, **kw) if request.param == "sync" else Blocking(*args, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.close()
        except Exception:
            pass
