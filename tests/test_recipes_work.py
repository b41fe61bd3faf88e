"""zmesh.recipes: waiting for work, the async twins, and the async driver's cancellation
rules (a unit test with no broker)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, cast

import pytest

from zmesh import AsyncClient, Client, InvalidArgument
from zmesh.recipes import (AsyncBarrier, AsyncClaimed, AsyncElection, AsyncLock, AsyncSemaphore, AsyncWorkWaiter,
                           Holder, Lock, WorkWaiter, wait_for_work)
from zmesh.recipes._drive import Site, arun
from zmesh.recipes._flow import Checkpoint, Flow, call
from zmesh.testing import BrokerProcess

from .test_recipes import Background, Connect, connect_fixture  # noqa: F401  (the fixture `connect`)


def waiting_flag() -> tuple[threading.Event, Any]:
    """A progress callback that says the wait is waiting (it is called only after a look found
    nothing), and the flag it sets."""
    flag = threading.Event()
    return flag, lambda elapsed, timeout: flag.set()


# ---------------------------------------------------------------- wait for work
def test_wait_gets_a_task_created_after_it_started_waiting(connect: Connect) -> None:
    worker, boss = connect("w"), connect("boss")
    flag, progress = waiting_flag()
    with WorkWaiter(worker, poll=None) as waiter:  # no fallback poll: only the event can wake it
        waiting = Background(lambda: waiter.wait(20, progress=progress, progress_every=0.05))
        assert flag.wait(10), "the wait never started waiting"
        assert worker.agent_info()["state"] == "idle"  # it reported itself idle
        created = time.monotonic()
        boss.create_task("job", data={"n": 1})
        work = waiting.result()
    assert waiting.done_at is not None and waiting.done_at - created < 2.0
    assert (work.kind, work.task_id, work.claimed, work.assigned) == ("task", "job", True, False)
    record = boss.task("job")
    assert (record["status"], record["owner"], record["token"]) == ("claimed", "w", work.token)
    assert work.record is not None and work.record["data"] == {"n": 1}
    assert work.waited_s > 0


def test_wait_times_out_as_an_answer(connect: Connect) -> None:
    worker = connect("w")
    started = time.monotonic()
    work = wait_for_work(worker, 0.2)
    assert work.kind == "timeout" and work.claim is None
    assert 0.2 <= work.waited_s and time.monotonic() - started >= 0.2


def test_wait_without_claim_names_the_task_claim_next_would_take(connect: Connect) -> None:
    worker, boss = connect("w", capabilities=["python"]), connect("boss")
    boss.create_task("low", priority=1, requires=["python"])
    boss.create_task("gpu", priority=9, requires=["gpu"])  # not this agent's work
    boss.create_task("high", priority=5)
    work = wait_for_work(worker, 1, claim=False)
    assert (work.kind, work.task_id, work.claimed) == ("task", "high", False)
    assert boss.task("high")["status"] == "available"
    claimed = wait_for_work(worker, 1)
    assert claimed.task_id == "high" and claimed.claimed


def test_wait_never_hands_out_a_recipe_task(connect: Connect) -> None:
    worker, other = connect("w"), connect("other")
    lock = Lock(other, "db")
    assert lock.acquire() and lock.release()
    assert other.task("lock:db")["status"] == "available"
    assert wait_for_work(worker, 0.2).kind == "timeout"
    assert wait_for_work(worker, 0.2, claim=False).kind == "timeout"
    assert other.task("lock:db")["status"] == "available"


def test_wait_answers_an_assignment_then_a_message(connect: Connect) -> None:
    worker, boss = connect("w"), connect("boss")
    boss.create_task("assigned-job", requires=["gpu"])  # not w's to take: only an assignment gives it
    with WorkWaiter(worker, poll=None) as waiter:
        flag, progress = waiting_flag()
        waiting = Background(lambda: waiter.wait(20, progress=progress, progress_every=0.05))
        assert flag.wait(10)
        boss.assign("w", "assigned-job")
        work = waiting.result()
        assert (work.kind, work.task_id, work.assigned) == ("task", "assigned-job", True)
        assert work.token == boss.task("assigned-job")["token"]
        assert boss.task("assigned-job")["owner"] == "w"

        boss.send("deploy at 5", {"sha": "abc"}, to="w")
        message = waiter.wait(10, report_idle=False)
    assert message.kind == "message" and message.message.subject == "deploy at 5"
    assert message.message.body == {"sha": "abc"}


# ---------------------------------------------------------------- the async twins
def test_async_lock_semaphore_and_claimed(broker: BrokerProcess) -> None:
    async def main() -> None:
        async with AsyncClient(broker.endpoint, agent="a") as a, AsyncClient(broker.endpoint, agent="b") as b:
            la, lb = AsyncLock(a, "db"), AsyncLock(b, "db", poll=30.0)
            assert await la.acquire()
            assert await lb.acquire(blocking=False) is False
            waiter = asyncio.ensure_future(lb.acquire(timeout=20))
            # still trying or waiting already: only the release (its event) lets it in before the
            # 30 s fallback poll
            released = time.monotonic()
            assert await la.release()
            assert await asyncio.wait_for(waiter, 20) is True
            assert time.monotonic() - released < 2.0
            assert await lb.holder() == Holder("b", lb.token or 0)
            assert await lb.release()

            sa, sb = AsyncSemaphore(a, "gpus", 1), AsyncSemaphore(b, "gpus", 1)
            async with sa:
                assert await sb.acquire(timeout=0.1) is False
                assert [h.agent for h in await sb.holders()] == ["a"]
            assert await sb.acquire(blocking=False)

            await a.create_task("t")
            async with AsyncClaimed(a, "t", ttl=0.3, complete=True) as held:
                await asyncio.sleep(1.0)  # three TTLs: the renewer keeps the claim
                assert (await a.task("t"))["owner"] == "a" and held.renewals >= 2
                held.result = 42
            assert (await a.task("t"))["result"] == 42

    asyncio.run(main())


def test_async_election_barrier_and_work(broker: BrokerProcess) -> None:
    async def main() -> None:
        async with AsyncClient(broker.endpoint, agent="a") as a, AsyncClient(broker.endpoint, agent="b") as b, \
                AsyncClient(broker.endpoint) as observer:
            seen: list[Holder | None] = []
            watching = await AsyncElection(observer, "lead").watch(seen.append)
            ea, eb = AsyncElection(a, "lead"), AsyncElection(b, "lead")
            assert await ea.campaign()
            assert await eb.campaign(timeout=0.1) is False
            second = asyncio.ensure_future(eb.campaign(timeout=20))
            assert await ea.resign()
            assert await asyncio.wait_for(second, 20) and eb.is_leader
            while seen[-1:] != [Holder("b", eb.token or 0)]:
                await asyncio.sleep(0.02)
            assert seen[0] is None and seen[1] is not None and seen[1].agent == "a"
            watching.cancel()

            ba, bb = AsyncBarrier(a, "sync", 2), AsyncBarrier(b, "sync", 2)
            assert await asyncio.wait_for(asyncio.gather(ba.wait(20), bb.wait(20)), 30) == [True, True]

            waiter = AsyncWorkWaiter(b, poll=None)
            waiting = asyncio.ensure_future(waiter.wait(20))
            while not waiter.waiting:
                await asyncio.sleep(0.01)
            await a.create_task("job")
            work = await asyncio.wait_for(waiting, 20)
            assert (work.kind, work.task_id, work.claimed) == ("task", "job", True)

            cancelled = asyncio.ensure_future(waiter.wait(20))
            while not waiter.waiting:
                await asyncio.sleep(0.01)
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            assert waiter.waiting == 0
            waiter.close()

    asyncio.run(main())


# ---------------------------------------------------------------- the async driver
class SlowClient:
    """Stands in for AsyncClient: ``claim`` answers after a while; ``release`` is recorded."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.calls: list[tuple[str, Any]] = []

    async def claim(self, task: str) -> str:
        self.started.set()
        await asyncio.sleep(0.1)
        self.calls.append(("claim", task))
        return f"claim-of-{task}"

    async def release(self, claim: str) -> None:
        await asyncio.sleep(0.01)
        self.calls.append(("release", claim))


def claim_flow(log: list[str]) -> Flow[str]:
    got = yield call("claim", "t")
    log.append(f"answered {got}")
    try:
        yield Checkpoint()
    except BaseException as exc:
        log.append(f"told {type(exc).__name__}")
        yield call("release", got)
        raise
    return str(got)


def test_a_cancelled_caller_gets_the_answer_then_gives_it_back() -> None:
    """The call in flight when the caller is cancelled runs to its answer; the flow is sent it,
    hears the cancellation at its next yield, and its clean-up calls run."""
    async def main() -> tuple[list[str], list[tuple[str, Any]]]:
        client, log = SlowClient(), cast(list[str], [])
        task = asyncio.ensure_future(arun(client, Site(asyncio.Event), claim_flow(log)))
        await client.started.wait()
        task.cancel()  # while claim is in flight
        with pytest.raises(asyncio.CancelledError):
            await task
        return log, client.calls

    log, calls = asyncio.run(main())
    assert log == ["answered claim-of-t", "told CancelledError"]
    assert calls == [("claim", "t"), ("release", "claim-of-t")]


def test_an_uncancelled_flow_returns_its_result() -> None:
    async def main() -> str:
        return await arun(SlowClient(), Site(asyncio.Event), claim_flow([]))

    assert asyncio.run(main()) == "claim-of-t"


def test_a_sync_client_is_refused_by_an_async_twin(broker: BrokerProcess) -> None:
    client = Client(broker.endpoint, agent="a")
    try:
        with pytest.raises(InvalidArgument) as err:
            AsyncLock(client, "x")  # type: ignore[arg-type]
        assert err.value.details["field"] == "client"
        with pytest.raises(InvalidArgument):
            WorkWaiter(AsyncClient(broker.endpoint, agent="b"), poll=None)  # type: ignore[arg-type]
    finally:
        client.close()
