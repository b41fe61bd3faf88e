"""Path reservations against a real broker process: eight processes race for one exclusive
pattern (exactly one wins), overlap decides across clients, and a holder killed with SIGKILL
loses its reservations within its lease TTL + 1 s."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from zmesh import AsyncClient, Client
from zmesh.errors import Conflict
from zmesh.testing import BrokerProcess

from .conftest import wait_for

RACERS = 8


def _racer(endpoint: str, agent: str, pattern: str, barrier: Any, out: Any) -> None:
    with Client(endpoint, agent=agent, ttl=30, timeout=10) as c:
        barrier.wait(30)
        try:
            got = c.reserve([pattern])
            out.put((agent, "won", got["reservations"][0]["token"]))
        except Conflict as exc:
            out.put((agent, "lost", exc.details["holder"]))
        barrier.wait(30)  # the winner holds on (closing unregisters) until every racer has tried


def test_of_eight_racing_processes_exactly_one_reserves(broker: BrokerProcess) -> None:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(RACERS), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(broker.endpoint, f"racer-{i}", "src/**", barrier, out))
             for i in range(RACERS)]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
            p.close()
        out.close()
        out.join_thread()
    winners = [r for r in results if r[1] == "won"]
    assert len(winners) == 1, results
    assert all(r[2] == winners[0][0] for r in results if r[1] == "lost")  # every loser names the winner


def test_overlap_across_clients_and_release(broker: BrokerProcess) -> None:
    with Client(broker.endpoint, agent="alice", ttl=10) as a, Client(broker.endpoint, agent="bob", ttl=10) as b:
        a.reserve(["src/**/*.py"])
        with pytest.raises(Conflict) as info:
            b.reserve(["src/zmesh/cli/*.py", "docs/**"])
        assert info.value.details["holder"] == "alice" and info.value.details["held_pattern"] == "src/**/*.py"
        b.reserve(["src/**/*.md", "docs/**"])  # no .py file in either: no overlap
        assert [(r["pattern"], r["agent"]) for r in b.reservations(path="src/x/y.py")] == [("src/**/*.py", "alice")]
        assert a.release_paths() == ["src/**/*.py"]
        b.reserve(["src/zmesh/cli/*.py"])


_HOLDER = """
import sys, time
from zmesh import AsyncClient, Client
c = Client(sys.argv[1], agent="doomed", ttl=2.0, timeout=10).connect()
c.reserve(["lib/**"])
print("held", flush=True)
time.sleep(600)
"""


def test_a_killed_holder_loses_its_reservations_within_its_ttl(broker: BrokerProcess) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, broker.endpoint], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with Client(broker.endpoint, agent="heir", ttl=10) as c:
            with pytest.raises(Conflict):
                c.reserve(["lib/core.py"])
            os.kill(holder.pid, signal.SIGKILL)
            killed = time.monotonic()
            wait_for(lambda: not c.reservations(agent="doomed"), timeout=3.0 + 2.0, what="the lease to lapse")
            assert time.monotonic() - killed <= 2.0 + 1.0  # its TTL + 1 s
            c.reserve(["lib/core.py"])
    finally:
        holder.kill()
        holder.wait(10)
        assert holder.stdout is not None
        holder.stdout.close()


def test_waiting_reserves_are_granted_first_come_first_served(broker: BrokerProcess) -> None:
    """Over the wire: the broker holds the reply until the grant, longer than the client's
    own timeout (the wait is added to it), and the queue keeps arrival order."""
    with Client(broker.endpoint, agent="holder", ttl=10) as holder, Client(broker.endpoint, timeout=5) as ops:
        holder.reserve(["src/**"])
        got: dict[str, Any] = {}
        order: list[str] = []

        def wait_for_it(agent: str, pattern: str) -> None:
            with Client(broker.endpoint, agent=agent, ttl=10, timeout=1.0) as c:
                got[agent] = c.reserve([pattern], wait=20)
                order.append(agent)
                if agent == "first":
                    c.release_paths()  # lets the second one through

        first = threading.Thread(target=wait_for_it, args=("first", "src/**"))
        first.start()
        wait_for(lambda: [w["agent"] for w in ops.reservation_state()["waiting"]] == ["first"], what="first queued")
        second = threading.Thread(target=wait_for_it, args=("second", "src/a.py"))
        second.start()
        wait_for(lambda: [w["agent"] for w in ops.reservation_state()["waiting"]] == ["first", "second"],
                 what="second queued behind first")
        time.sleep(1.5)  # longer than the waiters' client timeout (1 s): the wait extends it
        holder.release_paths()
        first.join(20)
        second.join(20)
        assert order == ["first", "second"], got
        assert got["first"]["reservations"][0]["pattern"] == "src/**"
        assert got["second"]["reservations"][0]["pattern"] == "src/a.py"


def test_the_async_client_waits_too(broker: BrokerProcess) -> None:
    async def run() -> None:
        async with AsyncClient(broker.endpoint, agent="async-holder", ttl=10) as holder, \
                AsyncClient(broker.endpoint, agent="async-waiter", ttl=10, timeout=1.0) as waiter:
            await holder.reserve(["pkg/**"])
            with pytest.raises(Conflict):  # the wait runs out: the conflict as it stands
                await waiter.reserve(["pkg/a.py"], wait=0.3)
            pending = asyncio.ensure_future(waiter.reserve(["pkg/a.py"], wait=20))
            while not (await holder.reservation_state())["waiting"]:
                await asyncio.sleep(0.02)
            await asyncio.sleep(1.2)  # past the waiter's own timeout (1 s): the wait extends it
            await holder.release_paths()
            got = await asyncio.wait_for(pending, 20)
            assert got["reservations"][0]["pattern"] == "pkg/a.py"

    asyncio.run(run())
