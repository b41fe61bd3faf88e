"""zmesh.recipes refuses bad arguments before any I/O, with InvalidArgument naming the
argument; the name limits are pinned against a real broker."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterator

import pytest

from zmesh import AsyncClient, Client, InvalidArgument
from zmesh.recipes import AsyncLock, Barrier, Claimed, Election, Lock, Semaphore, WorkWaiter
from zmesh.recipes._flow import TASK_ID_MAX_BYTES
from zmesh.testing import BrokerProcess



#: no broker listens here: every case below must be refused before anything is sent
NOWHERE = "tcp://127.0.0.1:1"


@pytest.fixture
def client() -> Iterator[Client]:
    c = Client(NOWHERE, agent="a", timeout=0.2)
    try:
        yield c
    finally:
        c.close(unregister=False)


@pytest.fixture
def observer() -> Iterator[Client]:
    c = Client(NOWHERE, timeout=0.2)
    try:
        yield c
    finally:
        c.close(unregister=False)


def refused(field: str, make: Callable[[], Any]) -> None:
    with pytest.raises(InvalidArgument) as err:
        make()
    assert err.value.details.get("field") == field, err.value
    assert field in err.value.message.lower() or field == "agent", err.value.message


NAMES = [("", "empty"), ("a\nb", "newline"), ("tab\there", "tab"), ("nul\x00", "NUL"), ("line\u2028sep", "U+2028"),
         ("x" * 300, "too long"), (7, "not a string"), (None, "None"), ("\udc80", "lone surrogate")]


@pytest.mark.parametrize("name", [n for n, _ in NAMES], ids=[i for _, i in NAMES])
@pytest.mark.parametrize("recipe", ["lock", "semaphore", "election", "barrier"])
def test_a_bad_name_is_refused(client: Client, recipe: str, name: Any) -> None:
    makers: dict[str, Callable[[], Any]] = {
        "lock": lambda: Lock(client, name), "semaphore": lambda: Semaphore(client, name, 2),
        "election": lambda: Election(client, name), "barrier": lambda: Barrier(client, name, 2)}
    refused("name", makers[recipe])


@pytest.mark.parametrize("n", [0, -1, True, 1.5, "2", None, 1001])
def test_a_bad_count_is_refused(client: Client, n: Any) -> None:
    refused("max_leases", lambda: Semaphore(client, "s", n))
    refused("parties", lambda: Barrier(client, "b", n))


@pytest.mark.parametrize("timeout", [-1, -0.001, float("nan"), float("inf"), "1", True])
def test_a_bad_timeout_is_refused(client: Client, observer: Client, timeout: Any) -> None:
    refused("timeout", lambda: Lock(client, "l").acquire(timeout=timeout))
    refused("timeout", lambda: Semaphore(client, "s", 2).acquire(timeout=timeout))
    refused("timeout", lambda: Election(client, "e").campaign(timeout=timeout))
    refused("timeout", lambda: next(Election(observer, "e").changes(timeout=timeout)))
    refused("timeout", lambda: Barrier(client, "b", 2).enter(timeout=timeout))
    refused("timeout", lambda: Barrier(client, "b", 2).leave(timeout=timeout))
    refused("timeout", lambda: Barrier(client, "b", 2).wait(timeout=timeout))
    refused("timeout", lambda: Claimed(client, "t", timeout=timeout))
    refused("timeout", lambda: WorkWaiter(client).wait(timeout))


@pytest.mark.parametrize("poll", [0, -1, float("nan"), "5", False])
def test_a_bad_poll_is_refused(client: Client, poll: Any) -> None:
    refused("poll", lambda: Lock(client, "l", poll=poll))
    refused("poll", lambda: Semaphore(client, "s", 2, poll=poll))
    refused("poll", lambda: Election(client, "e", poll=poll))
    refused("poll", lambda: Barrier(client, "b", 2, poll=poll))
    refused("poll", lambda: Claimed(client, "t", poll=poll))
    refused("poll", lambda: WorkWaiter(client, poll=poll))


def test_flags_and_callables_are_checked(client: Client, observer: Client) -> None:
    refused("blocking", lambda: Lock(client, "l").acquire(blocking="no"))  # type: ignore[arg-type]
    refused("blocking", lambda: Semaphore(client, "s", 2).acquire(blocking=1))  # type: ignore[arg-type]
    refused("blocking", lambda: Election(client, "e").campaign(blocking=None))  # type: ignore[arg-type]
    refused("callback", lambda: Election(observer, "e").watch("print"))  # type: ignore[arg-type]
    refused("func", lambda: Election(client, "e").run(42))  # type: ignore[arg-type]
    refused("complete", lambda: Claimed(client, "t", complete="yes"))  # type: ignore[arg-type]
    refused("fail_on_error", lambda: Claimed(client, "t", fail_on_error=1))  # type: ignore[arg-type]
    refused("blocking", lambda: Claimed(client, "t", blocking=0))  # type: ignore[arg-type]
    refused("claim", lambda: WorkWaiter(client).wait(1, claim="no"))  # type: ignore[arg-type]
    refused("report_idle", lambda: WorkWaiter(client).wait(1, report_idle=None))  # type: ignore[arg-type]
    refused("progress", lambda: WorkWaiter(client).wait(1, progress=3))  # type: ignore[arg-type]
    refused("progress_every", lambda: WorkWaiter(client).wait(1, progress_every=0))
    refused("messages", lambda: WorkWaiter(client, messages="all"))  # type: ignore[arg-type]
    refused("capabilities", lambda: WorkWaiter(client, capabilities="python"))
    refused("capabilities", lambda: WorkWaiter(client, capabilities=5))  # type: ignore[arg-type]
    refused("capabilities", lambda: WorkWaiter(client, capabilities=["ok", ""]))


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), "10"])
def test_a_bad_claim_ttl_is_refused(client: Client, ttl: Any) -> None:
    refused("ttl", lambda: Claimed(client, "t", ttl=ttl))
    refused("ttl", lambda: WorkWaiter(client).wait(1, ttl=ttl))


def test_a_task_id_for_claimed_is_checked_as_a_name(client: Client) -> None:
    refused("task_id", lambda: Claimed(client, ""))
    refused("task_id", lambda: Claimed(client, "a\rb"))
    refused("task_id", lambda: Claimed(client, "t" * (TASK_ID_MAX_BYTES + 1)))


def test_holding_needs_an_agent_observing_does_not(observer: Client) -> None:
    refused("agent", lambda: Lock(observer, "l"))
    refused("agent", lambda: Semaphore(observer, "s", 2))
    refused("agent", lambda: Barrier(observer, "b", 2))
    refused("agent", lambda: Claimed(observer, "t"))
    refused("agent", lambda: WorkWaiter(observer))
    election = Election(observer, "e")  # an observer may watch an election...
    refused("agent", lambda: election.campaign())  # ...but not campaign in it


def test_each_twin_takes_its_own_client(client: Client) -> None:
    refused("client", lambda: AsyncLock(client, "l"))  # type: ignore[arg-type]

    async def main() -> None:
        async_client = AsyncClient(NOWHERE, agent="a")
        try:
            refused("client", lambda: Lock(async_client, "l"))  # type: ignore[arg-type]
            lock = AsyncLock(async_client, "l")
            with pytest.raises(InvalidArgument) as err:
                await lock.acquire(timeout=-1)
            assert err.value.details["field"] == "timeout"
        finally:
            await async_client.aclose(unregister=False)

    asyncio.run(main())


def test_the_name_limits_are_the_brokers(broker: BrokerProcess) -> None:
    """The longest name the recipes take makes a task id the broker accepts, and one byte
    more is refused here: the mirrored limit is the broker's."""
    with Client(broker.endpoint, agent="a") as c:
        longest = TASK_ID_MAX_BYTES - len("lock:")
        lock = Lock(c, "x" * longest)
        assert lock.acquire(blocking=False) and len(lock.task_id.encode()) == TASK_ID_MAX_BYTES
        assert lock.release()
        refused("name", lambda: Lock(c, "x" * (longest + 1)))
        wide = "é" * (longest // 2)  # two bytes each
        assert Lock(c, wide).acquire(blocking=False)
        refused("name", lambda: Lock(c, wide + "é"))
        # a semaphore's name leaves room for its longest slot id, "#<max_leases>"
        sem_longest = TASK_ID_MAX_BYTES - len("sem:") - len("#10")
        sem = Semaphore(c, "s" * sem_longest, 10)
        assert sem.acquire(blocking=False) and len((sem.slot or "").encode()) <= TASK_ID_MAX_BYTES
        assert len(f"{sem.task_id}#10".encode()) == TASK_ID_MAX_BYTES
        refused("name", lambda: Semaphore(c, "s" * (sem_longest + 1), 10))
        c.create_task("t" * TASK_ID_MAX_BYTES)
        with Claimed(c, "t" * TASK_ID_MAX_BYTES) as held:
            assert held.token is not None


def test_the_recipes_surface_is_pinned_and_the_twins_match() -> None:
    import inspect

    import zmesh.recipes as recipes

    assert set(recipes.__all__) == {
        "Claimed", "AsyncClaimed", "Lock", "AsyncLock", "Semaphore", "AsyncSemaphore", "Election", "AsyncElection",
        "Watching", "Barrier", "AsyncBarrier", "WorkWaiter", "AsyncWorkWaiter", "Work", "wait_for_work",
        "WORK_EVENTS", "Holder", "RECIPE_CAPABILITY", "FALLBACK_POLL_S"}
    for name in recipes.__all__:
        assert hasattr(recipes, name)
    for sync in (recipes.Claimed, recipes.Lock, recipes.Semaphore, recipes.Election, recipes.Barrier,
                 recipes.WorkWaiter):
        twin = getattr(recipes, "Async" + sync.__name__)

        def public(cls: type) -> set[str]:
            return {n for n in dir(cls) if not n.startswith("_")}

        assert public(sync) == public(twin), sync.__name__
        for attr in public(sync):
            a, b = getattr(sync, attr), getattr(twin, attr)
            if inspect.isfunction(a) and a is not b:  # the shared core's methods do no I/O
                assert inspect.signature(a).parameters.keys() == inspect.signature(b).parameters.keys(), attr
                assert inspect.iscoroutinefunction(b) or inspect.isasyncgenfunction(b), attr
