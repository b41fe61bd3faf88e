"""The two drivers of the recipe flows (``_flow``): :func:`run` answers actions with a
:class:`zmesh.Client`, :func:`arun` with a :class:`zmesh.AsyncClient`. Each client gets one
:class:`Site`: its :class:`Board`, its :class:`Holds` and its task-event subscription.

Rules it keeps:

* An error an action raises, ``KeyboardInterrupt`` and cancellation included, is thrown
  into the flow at its ``yield``, so the flow may give back what it holds before it
  re-raises.
* The async driver sees every answer the broker gave. A call runs to its answer even when
  the caller is cancelled meanwhile (as ``anyio.CancelScope(shield=True)`` would), because
  the answer may be a claim. The flow is sent that answer and then hears the cancellation
  at its next ``yield``. Actions it yields after that, its clean-up, run to completion too,
  and the cancellation is raised when the flow ends.
* The subscription starts the first time a flow yields ``Watch``, from the seq ``hello``
  answers, and runs until the client closes (``Client.subscribe`` / ``AsyncClient.subscribe``:
  at least once, in order, gap-free, through broker outages). A client used again after
  ``close()`` gets a new one.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any, TypeVar

from ._flow import Call, Checkpoint, Flow, Notify, Wait, Watch
from ._watch import TASK_TOPICS, Board, Holds, Signal

T = TypeVar("T")


class Site:
    """What the recipes keep per client."""

    def __init__(self, make_signal: Any) -> None:
        self.board = Board(make_signal)
        self.holds = Holds()
        self.lock = threading.Lock()
        #: the subscription: a thread (Client) or a task (AsyncClient)
        self.subscription: Any = None
        self.alock: asyncio.Lock | None = None


_sites: "weakref.WeakKeyDictionary[Any, Site]" = weakref.WeakKeyDictionary()
_sites_lock = threading.Lock()


def _site(client: Any, make_signal: Any) -> Site:
    with _sites_lock:
        site = _sites.get(client)
        if site is None:
            site = _sites[client] = Site(make_signal)
        return site


def sync_site(client: Any) -> Site:
    return _site(client, threading.Event)


def async_site(client: Any) -> Site:
    return _site(client, asyncio.Event)


# ---------------------------------------------------------------- Client
def run(client: Any, site: Site, flow: Flow[T]) -> T:
    """Drive ``flow`` to its result with a blocking Client."""
    send: Any = None
    throw: BaseException | None = None
    while True:
        try:
            action = flow.throw(throw) if throw is not None else flow.send(send)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        send, throw = None, None
        try:
            send = _perform(client, site, action)
        except BaseException as exc:  # KeyboardInterrupt too: the flow gives back what it took
            throw = exc


def _perform(client: Any, site: Site, action: Any) -> Any:
    if isinstance(action, Call):
        return getattr(client, action.method)(*action.args, **action.kwargs)
    if isinstance(action, Wait):
        return action.interest.signal.wait(action.seconds)  # type: ignore[attr-defined]
    if isinstance(action, Watch):
        return _watch(client, site)
    if isinstance(action, Notify):
        return action.callback(*action.args)
    if isinstance(action, Checkpoint):
        return None
    raise TypeError(f"not a recipe action: {action!r}")


def _watch(client: Any, site: Site) -> Board:
    with site.lock:
        sub = site.subscription
        if sub is None or not sub.is_alive():
            since = client.hello()["seq"]
            site.subscription = client.subscribe(site.board.deliver, TASK_TOPICS, since=since)
    return site.board


# ---------------------------------------------------------------- AsyncClient
async def arun(client: Any, site: Site, flow: Flow[T]) -> T:
    """Drive ``flow`` to its result with an AsyncClient (module rules on cancellation)."""
    send: Any = None
    throw: BaseException | None = None
    cancelled: BaseException | None = None
    told = False
    while True:
        try:
            action = flow.throw(throw) if throw is not None else flow.send(send)
        except StopIteration as stop:
            result: T = stop.value
            break
        send, throw = None, None
        if cancelled is not None and not told:
            told, throw = True, cancelled  # heard at this yield; the action is not run
            continue
        if isinstance(action, Call):
            fut, late = await _answer(getattr(client, action.method)(*action.args, **action.kwargs))
            if late is not None and cancelled is None:
                cancelled = late  # the flow gets the answer first, then the cancellation
            if fut.cancelled():
                throw = asyncio.CancelledError()
            elif fut.exception() is not None:
                throw = fut.exception()
            else:
                send = fut.result()
            continue
        try:
            send = await _aperform(client, site, action)
        except asyncio.CancelledError as exc:
            if cancelled is None:
                cancelled, told, throw = exc, True, exc
            # during clean-up (told already): the clean-up goes on
        except BaseException as exc:
            throw = exc
    if cancelled is not None:
        raise cancelled
    return result


async def _answer(coro: Any) -> tuple["asyncio.Future[Any]", BaseException | None]:
    """Run one client call to its answer even if the caller is cancelled meanwhile; return
    it (as a done future) with the cancellation that came, if one did."""
    fut = asyncio.ensure_future(coro)
    cancelled: BaseException | None = None
    while not fut.done():
        try:
            await asyncio.wait([fut])
        except asyncio.CancelledError as exc:
            cancelled = cancelled or exc
    return fut, cancelled


async def _aperform(client: Any, site: Site, action: Any) -> Any:
    if isinstance(action, Wait):
        return await _wait(action.interest.signal, action.seconds)
    if isinstance(action, Watch):
        return await _awatch(client, site)
    if isinstance(action, Notify):
        got = action.callback(*action.args)
        return await got if asyncio.iscoroutine(got) or isinstance(got, asyncio.Future) else got
    if isinstance(action, Checkpoint):
        await asyncio.sleep(0)
        return None
    raise TypeError(f"not a recipe action: {action!r}")


async def _wait(signal: Signal, seconds: float) -> bool:
    if signal.is_set():
        return True
    try:
        await asyncio.wait_for(signal.wait(), seconds)  # type: ignore[attr-defined]
    except asyncio.TimeoutError:
        return False
    return True


async def _awatch(client: Any, site: Site) -> Board:
    sub = site.subscription
    if sub is not None and not sub.done():
        return site.board
    if site.alock is None:
        site.alock = asyncio.Lock()
    async with site.alock:
        sub = site.subscription
        if sub is None or sub.done():
            since = (await client.hello())["seq"]
            site.subscription = client.subscribe(site.board.deliver, TASK_TOPICS, since=since)
    return site.board
