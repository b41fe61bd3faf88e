"""A holder SIGKILLed: the lock, a semaphore slot, the leadership pass on within the holder's
lease TTL + 1 s of the kill, to a waiter with a larger fencing token; a barrier party that
dies before the barrier opens no longer counts.

The holder is a separate process (tests/recipe_holder.py) with its own agent and a 2 s
lease. Its client heartbeats every TTL/3, so at the kill its lease has between 1.33 s and
2 s left. The broker's loop sleeps until the next deadline, so it expires the lease at its
deadline and publishes ``task.released`` (reason ``lease_expired``). The waiter's event
subscription wakes it, and it claims. The bound TTL + 1 s leaves about a second for the
expiry, the event and the claim, which take milliseconds here. The smallest TTL the broker
takes is MIN_TTL_S = 0.1 s; 2 s keeps the holder's heartbeats far from the edge on a
loaded machine.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


from zmesh.recipes import Barrier, Election, Holder, Lock, Semaphore
from zmesh.testing import BrokerProcess

from .conftest import wait_for
from .test_recipes import Background, Connect, connect_fixture  # noqa: F401  (the fixture `connect`)

ROOT = Path(__file__).resolve().parent.parent
HOLDER = Path(__file__).resolve().parent / "recipe_holder.py"
TTL = 2.0
BOUND = TTL + 1.0


class Held:
    """A holder process, and the token it printed."""

    def __init__(self, proc: subprocess.Popen[str], token: int) -> None:
        self.proc = proc
        self.token = token
        self.killed_at: float | None = None

    def kill(self) -> float:
        """SIGKILL, as a crash would; the moment it was sent."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.killed_at = time.monotonic()
        self.proc.wait(10)
        return self.killed_at


@contextmanager
def holder(broker: BrokerProcess, kind: str, name: str, agent: str, *extra: str) -> Iterator[Held]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(HOLDER), broker.endpoint, kind, name, agent, str(TTL), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env=env)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("acquired "):
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise AssertionError(f"holder did not acquire: {line!r}\n{err}")
        yield Held(proc, int(line.split()[1]))
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def handover(waiting: Background, held: Held, what: str) -> float:
    assert waiting.result(timeout=BOUND + 10) is True, f"the {what} was not passed on"
    assert waiting.done_at is not None and held.killed_at is not None
    took = waiting.done_at - held.killed_at
    print(f"\n{what}: handed over {took:.3f} s after SIGKILL (bound {BOUND:g} s)")
    assert took <= BOUND, f"the {what} took {took:.3f} s to pass on, more than TTL + 1 s = {BOUND:g} s"
    return took


def test_a_lock_passes_on_within_the_ttl_of_a_killed_holder(broker: BrokerProcess, connect: Connect,
                                                            record_property: Callable[[str, object], None]) -> None:
    with holder(broker, "lock", "db", "doomed") as held:
        lock = Lock(connect("survivor"), "db", poll=30.0)  # the fallback poll is out of the race
        assert lock.holder() == Holder("doomed", held.token)
        assert lock.acquire(blocking=False) is False
        waiting = Background(lambda: lock.acquire(timeout=BOUND + 10))
        wait_for(lambda: len(lock._site.board) > 0, what="the waiter to register for the lock's events")
        held.kill()
        record_property("lock_handover_s", handover(waiting, held, "lock"))
    assert lock.token is not None and lock.token > held.token
    assert lock.holder() == Holder("survivor", lock.token)


def test_a_semaphore_slot_passes_on_within_the_ttl_of_a_killed_holder(
        broker: BrokerProcess, connect: Connect, record_property: Callable[[str, object], None]) -> None:
    with holder(broker, "semaphore", "gpus", "doomed", "2") as held:
        steady = Semaphore(connect("steady"), "gpus", 2)
        assert steady.acquire(blocking=False)
        waiter = Semaphore(connect("survivor"), "gpus", 2, poll=30.0)
        assert waiter.acquire(blocking=False) is False
        assert sorted(h.agent for h in waiter.holders()) == ["doomed", "steady"]
        waiting = Background(lambda: waiter.acquire(timeout=BOUND + 10))
        wait_for(lambda: len(waiter._site.board) > 0, what="the waiter to register for the slots' events")
        held.kill()
        record_property("semaphore_handover_s", handover(waiting, held, "semaphore slot"))
    assert waiter.token is not None and waiter.token > held.token
    assert sorted(h.agent for h in waiter.holders()) == ["steady", "survivor"]
    assert steady.check()


def test_leadership_passes_on_within_the_ttl_of_a_killed_leader(broker: BrokerProcess, connect: Connect,
                                                                record_property: Callable[[str, object], None]) -> None:
    seen: list[Holder | None] = []
    with holder(broker, "election", "coordinator", "doomed") as held:
        watching = Election(connect(), "coordinator").watch(seen.append)
        assert seen == [Holder("doomed", held.token)]
        heir = Election(connect("heir"), "coordinator", poll=30.0)
        assert heir.campaign(blocking=False) is False
        waiting = Background(lambda: heir.campaign(timeout=BOUND + 10))
        wait_for(lambda: len(heir._site.board) > 0, what="the heir to register for the leadership's events")
        held.kill()
        record_property("election_handover_s", handover(waiting, held, "leadership"))
    assert heir.is_leader and heir.token is not None and heir.token > held.token
    wait_for(lambda: seen[-1] == Holder("heir", heir.token or 0), what="the observer to see the new leader")
    assert seen == [Holder("doomed", held.token), None, Holder("heir", heir.token)]
    watching.cancel()


def test_a_barrier_party_killed_before_the_barrier_opened_no_longer_counts(broker: BrokerProcess,
                                                                          connect: Connect) -> None:
    with holder(broker, "barrier", "rendezvous", "doomed", "2") as held:
        first = Barrier(connect("first"), "rendezvous", 2)
        assert [h.agent for h in first.arrived()] == ["doomed"]
        held.kill()
        wait_for(lambda: first.arrived() == [], timeout=BOUND, what="the dead party's place to be released")
        assert first.enter(timeout=0.3) is False  # nobody passes on behalf of the dead party
        assert not first.is_open()
        entering = Background(lambda: first.enter(timeout=30))
        second = Barrier(connect("second"), "rendezvous", 2)
        assert second.enter(timeout=30) is True
        assert entering.result() is True
        assert sorted(h.agent for h in second.arrived()) == ["first", "second"]
        assert min(first.token or 0, second.token or 0) > held.token
