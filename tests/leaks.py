"""A test that leaves a thread running or a socket open (a ZeroMQ socket, whose mailbox is an
eventfd; a TCP or Unix connection; a child's pipe) fails, naming what it left (pyzmq's and
python-zeroconf's test suites do the same). Every test is checked. What lives for the whole
session is not a leak: the global ZeroMQ contexts (sync and asyncio) and their I/O threads,
and multiprocessing's resource tracker, started before the first test. Files are not counted (a multiprocessing semaphore is freed
with its object, whenever the collector gets to it).

A thread or socket is given a short grace to go away after the test (a ZeroMQ socket's
linger, a thread finishing its join), polled, never slept for. ``LEAKS_REPORT=PATH`` appends
each leak to PATH instead of failing (to survey a suite)."""

from __future__ import annotations

import gc
import os
import threading
import time
from multiprocessing import resource_tracker
from typing import Iterator

import pytest
import zmq
import zmq.asyncio

GRACE_S = 3.0


#: what a descriptor is when it is a connection or a ZeroMQ socket (readlink of /proc/self/fd/N)
_SOCKETS = ("socket:", "pipe:", "anon_inode:[eventfd]", "anon_inode:[eventpoll]")


def _fds() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the directory's own fd, gone by now
            continue
        if target.startswith(_SOCKETS):
            out[int(name)] = target
    return out


def _left(threads: set[threading.Thread], fds: dict[int, str]) -> list[str]:
    left = [f"thread {t.name!r} ({type(t).__name__})" for t in threading.enumerate()
            if t not in threads and t.is_alive()]
    now = _fds()
    left += [f"fd {fd} -> {target}" for fd, target in sorted(now.items()) if fds.get(fd) != target]
    return left


@pytest.fixture(scope="session", autouse=True)
def _session_singletons() -> None:
    """Made once for the session, before any test counts its descriptors: a context starts its
    I/O thread (and its descriptors) with its first socket."""
    for ctx in (zmq.Context.instance(), zmq.asyncio.Context.instance()):
        ctx.socket(zmq.DEALER).close(linger=0)
    resource_tracker.ensure_running()  # multiprocessing's, started by the first semaphore: a pipe to it


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest, _session_singletons: None) -> Iterator[None]:
    threads, fds = set(threading.enumerate()), _fds()
    yield
    deadline = time.monotonic() + GRACE_S
    left = _left(threads, fds)
    if left:  # an object in a reference cycle (a multiprocessing queue) closes its pipe when collected
        gc.collect()
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = _left(threads, fds)
    if not left:
        return
    report = os.environ.get("LEAKS_REPORT")
    if report:
        with open(report, "a") as out:
            out.write(f"{request.node.nodeid}\t{'; '.join(left)}\n")
        return
    pytest.fail(f"the test left {len(left)} behind: " + "; ".join(left), pytrace=False)
