"""zmesh.recipes against a real broker: the claim context manager, Lock, Semaphore, Election
and Barrier (wait-for-work: test_recipes_work.py; SIGKILLed holders: test_recipes_kill.py;
bad arguments: test_recipes_args.py)."""

from __future__ import annotations

import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Generator, Iterator, Optional, cast

import pytest

from zmesh import Client, Conflict, InvalidArgument
from zmesh.recipes import Barrier, Claimed, Election, Holder, Lock, Semaphore
from zmesh.testing import BrokerProcess

from .conftest import wait_for

Connect = Callable[..., Client]


@pytest.fixture(name="connect")
def connect_fixture(broker: BrokerProcess) -> Iterator[Connect]:
    """Clients on the test's broker, all closed at the end (at once: each close waits for its
    event thread's next poll)."""
    made: list[Client] = []

    def make(agent: str | None = None, **kw: Any) -> Client:
        client = Client(broker.endpoint, agent=agent, **kw)
        made.append(client)
        return client

    yield make
    with ThreadPoolExecutor(max(1, len(made))) as pool:
        list(pool.map(lambda c: c.close(), made))


class Background:
    """A call run in a thread; ``result()`` joins it and returns (or raises) what it did."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.done_at: float | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.value = fn()
        except BaseException as exc:
            self.error = exc
        self.done_at = time.monotonic()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float = 20.0) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "background call did not end"
        if self.error is not None:
            raise self.error
        return self.value


# ---------------------------------------------------------------- the claim context manager
def test_claimed_releases_on_exit_and_on_exception(connect: Connect) -> None:
    a = connect("a")
    a.create_task("t1")
    with Claimed(a, "t1") as held:
        assert held.token is not None and held.is_held
        record = a.task("t1")
        assert (record["status"], record["owner"], record["token"]) == ("claimed", "a", held.token)
    assert a.task("t1")["status"] == "available"
    assert held.token is None

    with pytest.raises(RuntimeError, match="boom"):
        with Claimed(a, "t1") as held:
            assert a.task("t1")["owner"] == "a"
            raise RuntimeError("boom")
    record = a.task("t1")
    assert record["status"] == "available" and record["attempts"] == 0
    assert record["history"][-1]["event"] == "released"


def test_claimed_completes_or_fails_when_asked(connect: Connect) -> None:
    a = connect("a")
    a.create_task("ok")
    with Claimed(a, "ok", complete=True) as held:
        held.result = {"sha": "abc"}
        token = held.token
    record = a.task("ok")
    assert (record["status"], record["result"], record["completed_token"]) == ("completed", {"sha": "abc"}, token)

    a.create_task("bad")
    with pytest.raises(ValueError):
        with Claimed(a, "bad", complete=True, fail_on_error=True):
            raise ValueError("disk full")
    record = a.task("bad")
    assert (record["status"], record["attempts"]) == ("available", 1)
    assert "disk full" in record["history"][-1]["error"]


def test_claimed_refuses_a_held_task_naming_the_holder(connect: Connect) -> None:
    a, b = connect("a"), connect("b")
    a.create_task("t")
    with Claimed(a, "t"):
        with pytest.raises(Conflict) as err:
            with Claimed(b, "t"):
                pass
        assert err.value.details["holder"] == "a"
        started = time.monotonic()
        with pytest.raises(Conflict):
            with Claimed(b, "t", blocking=True, timeout=0.2):
                pass
        assert time.monotonic() - started >= 0.2


def test_claimed_with_a_ttl_is_renewed_while_the_block_runs(connect: Connect) -> None:
    a = connect("a")
    a.create_task("long")
    with Claimed(a, "long", ttl=0.3) as held:
        token = held.token
        ends = time.monotonic() + 1.2  # four claim TTLs: lapsed long ago without the renewals
        while time.monotonic() < ends:
            record = a.task("long")
            assert (record["status"], record["owner"], record["token"]) == ("claimed", "a", token)
            time.sleep(0.05)
        assert held.renewals >= 3 and held.lost is None and held.is_held
    assert a.task("long")["status"] == "available"


def test_claimed_without_renewals_lapses_after_its_ttl(connect: Connect) -> None:
    """The counter-test: the same claim TTL, taken with the plain client call and not
    renewed, is ended by the broker (so the renewer is what kept it above)."""
    a = connect("a")
    a.create_task("short")
    claim = a.claim("short", ttl=0.3)
    assert claim is not None
    wait_for(lambda: a.task("short")["status"] == "available", timeout=5, what="claim TTL lapse")
    assert a.task("short")["history"][-1]["event"] == "claim_expired"


# ---------------------------------------------------------------- Lock
def test_lock_excludes_other_agents(connect: Connect) -> None:
    a, b = connect("a"), connect("b")
    la, lb = Lock(a, "db"), Lock(b, "db")
    assert la.acquire()
    assert la.is_acquired and la.token is not None
    assert lb.acquire(blocking=False) is False
    started = time.monotonic()
    assert lb.acquire(timeout=0.3) is False
    assert time.monotonic() - started >= 0.3
    assert lb.holder() == la.holder() == Holder("a", la.token)
    assert la.check() and not lb.check()
    assert la.release() is True and la.token is None
    assert la.release() is False  # nothing held
    assert lb.acquire(blocking=False) and lb.token is not None


def test_lock_waiter_is_woken_by_the_release_event(connect: Connect) -> None:
    a, b = connect("a"), connect("b")
    la = Lock(a, "db")
    lb = Lock(b, "db", poll=30.0)  # the fallback poll would take 30 s: only the event can be faster
    assert la.acquire()
    first = la.token
    waiter = Background(lambda: lb.acquire(timeout=20))
    wait_for(lambda: len(lb._site.board) > 0, what="the waiter registered for the lock's events")
    released = time.monotonic()
    assert la.release()
    assert waiter.result() is True
    assert waiter.done_at is not None and waiter.done_at - released < 2.0
    assert lb.token is not None and first is not None and lb.token > first
    assert lb.holder() == Holder("b", lb.token)


def test_lock_objects_of_one_client_exclude_each_other(connect: Connect) -> None:
    """One agent, two Lock objects: the broker answers the second claim with the first's, and
    the recipe must not take that for its own."""
    a = connect("a")
    one, two = Lock(a, "db"), Lock(a, "db")
    assert one.acquire()
    assert two.acquire(blocking=False) is False and not two.is_acquired
    waiter = Background(lambda: two.acquire(timeout=20))
    assert one.release()
    assert waiter.result() is True
    assert two.token is not None and one.token is None


def test_lock_context_manager_releases_on_exception(connect: Connect) -> None:
    a, b = connect("a"), connect("b")
    with pytest.raises(KeyError):
        with Lock(a, "db") as lock:
            assert lock.is_acquired
            raise KeyError("x")
    assert Lock(b, "db").holder() is None
    assert Lock(b, "db").acquire(blocking=False)


def test_lock_is_lost_with_the_lease_and_passes_on(connect: Connect) -> None:
    """The holder stops heartbeating (heartbeat=False): its lease lapses after its TTL, the
    broker releases the lock, the holder's events say so, and another agent takes it."""
    a, b = connect("a", ttl=0.5, heartbeat=False), connect("b")
    la, lb = Lock(a, "db"), Lock(b, "db")
    assert la.acquire()
    lost_token = la.token
    waiter = Background(lambda: lb.acquire(timeout=20))
    wait_for(lambda: not la.is_acquired, timeout=5, what="the holder's events to show the lapse")
    assert waiter.result() is True
    assert lb.token is not None and lost_token is not None and lb.token > lost_token
    assert la.check() is False
    assert la.release() is False  # the claim had ended: not an error


def test_lock_never_uses_a_task_of_another_kind(connect: Connect) -> None:
    a = connect("a")
    a.create_task("lock:taken")
    with pytest.raises(Conflict) as err:
        Lock(a, "taken").acquire()
    assert err.value.details["task"] == "lock:taken"
    assert a.task("lock:taken")["status"] == "available"


# ---------------------------------------------------------------- Semaphore
def test_semaphore_admits_exactly_n_holders(connect: Connect) -> None:
    clients = [connect(f"gpu-user-{i}") for i in range(3)]
    sems = [Semaphore(c, "gpus", max_leases=2) for c in clients]
    assert [s.acquire(blocking=False) for s in sems] == [True, True, False]
    holders = sems[2].holders()
    assert sorted(h.agent for h in holders) == ["gpu-user-0", "gpu-user-1"]
    assert {h.token for h in holders} == {sems[0].token, sems[1].token}
    assert sems[0].slot != sems[1].slot
    waiter = Background(lambda: sems[2].acquire(timeout=20))
    freed = sems[0].slot
    assert sems[0].release()
    assert waiter.result() is True
    assert sems[2].slot == freed
    assert sorted(h.agent for h in sems[0].holders()) == ["gpu-user-1", "gpu-user-2"]


def test_semaphore_first_creator_fixes_n(connect: Connect) -> None:
    a, b = connect("a"), connect("b")
    assert Semaphore(a, "quota", max_leases=2).acquire()
    with pytest.raises(InvalidArgument) as err:
        Semaphore(b, "quota", max_leases=3).acquire()
    assert err.value.details["field"] == "max_leases"
    assert err.value.details["max_leases"] == 2


def test_semaphore_objects_of_one_agent_take_different_slots(connect: Connect) -> None:
    a = connect("a")
    first, second, third = (Semaphore(a, "q", max_leases=2) for _ in range(3))
    assert first.acquire(blocking=False) and second.acquire(blocking=False)
    assert first.slot != second.slot
    assert third.acquire(blocking=False) is False
    assert len(first.holders()) == 2


# ---------------------------------------------------------------- Election
def test_election_has_one_leader_and_observers_follow_it(connect: Connect) -> None:
    candidates = [Election(connect(f"cand-{i}"), "coordinator") for i in range(3)]
    observer = Election(connect(), "coordinator")  # no agent: it may only observe
    seen: list[Holder | None] = []
    watching = observer.watch(seen.append)
    assert seen == [None]  # nobody leads yet: told at once

    campaigns = [Background(functools.partial(e.campaign, timeout=30)) for e in candidates]
    wait_for(lambda: sum(e.is_leader for e in candidates) == 1, what="one leader")
    first = next(e for e in candidates if e.is_leader)
    assert observer.leader() == Holder(first.agent or "", first.token or 0)
    wait_for(lambda: seen[-1] == observer.leader(), what="the observer's callback to show the leader")

    assert first.resign()
    wait_for(lambda: sum(e.is_leader for e in candidates) == 1, what="a second leader")
    second = next(e for e in candidates if e.is_leader)
    assert second is not first and not first.is_leader
    assert second.token is not None and first.token is None
    wait_for(lambda: seen[-1] == Holder(second.agent or "", second.token or 0), what="the observer to follow")
    tokens = [h.token for h in seen if h is not None]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    assert watching.leader == observer.leader()
    watching.cancel()

    for e in candidates:
        e.resign()
    for c in campaigns:
        assert c.result() is True  # each was elected in turn


def test_election_run_leads_then_resigns(connect: Connect) -> None:
    a, b = connect("a"), connect("b")
    ea, eb = Election(a, "etl"), Election(b, "etl")
    led = ea.run(lambda x: (x, ea.is_leader, ea.token, eb.leader()), 7)
    assert led[:2] == (7, True) and led[3] == Holder("a", led[2])
    assert not ea.is_leader and ea.token is None and eb.leader() is None
    assert eb.campaign(blocking=False)


def test_election_changes_iterates_leaders(connect: Connect) -> None:
    a, obs = connect("a"), connect()
    ea = Election(a, "e")
    changes = cast(Generator[Optional[Holder], None, None], Election(obs, "e").changes(timeout=10))
    assert next(changes) is None
    assert ea.campaign()
    assert next(changes) == Holder("a", ea.token or 0)
    assert ea.resign()
    assert next(changes) is None
    changes.close()


# ---------------------------------------------------------------- Barrier
def test_barrier_opens_only_when_all_parties_arrived(connect: Connect) -> None:
    parties = [Barrier(connect(f"p{i}"), "load", parties=3) for i in range(3)]
    early = [Background(functools.partial(b.enter, timeout=30)) for b in parties[:2]]
    wait_for(lambda: len(parties[2].arrived()) == 2, what="two parties to arrive")
    assert not any(e.done for e in early), "the barrier let parties through before all arrived"
    assert parties[2].is_open() is False
    assert parties[2].enter(timeout=30) is True
    assert [e.result() for e in early] == [True, True]
    assert parties[0].is_open()
    tokens = {b.token for b in parties}
    assert None not in tokens and len(tokens) == 3


def test_barrier_leave_waits_for_every_party(connect: Connect) -> None:
    one, two = (Barrier(connect(f"p{i}"), "step-1", parties=2) for i in range(2))
    entering = Background(lambda: one.enter(timeout=30))
    assert two.enter(timeout=30) and entering.result()
    assert one.leave(timeout=0.2) is False  # two is still in
    leaving = Background(lambda: one.leave(timeout=30))
    assert two.leave(timeout=30) is True
    assert leaving.result() is True
    assert one.arrived() == []
    late = Barrier(connect("late"), "step-1", parties=2)
    assert late.wait(timeout=5)  # single-use: once open, it stays open


def test_barrier_party_that_gives_up_has_not_arrived(connect: Connect) -> None:
    alone = Barrier(connect("a"), "b", parties=2)
    assert alone.enter(timeout=0.2) is False
    assert alone.arrived() == [] and alone.token is None
    with pytest.raises(InvalidArgument) as err:
        Barrier(connect("c"), "b", parties=3).enter(timeout=0)
    assert err.value.details["field"] == "parties"
