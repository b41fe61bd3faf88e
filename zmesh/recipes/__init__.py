"""Coordination recipes on the public zmesh client (kazoo's ``recipe`` package): a claim
held for a ``with`` block, locks, semaphores, leader election with observers, barriers,
and waiting for work. docs/RECIPES.md explains each.

Every recipe holds what it holds as a task claim (the broker's one claim machinery: one
winner, fencing tokens that only increase, claims that end with the agent's lease), and
waits on the broker's task events. Each comes as a twin: ``Lock`` for a ``zmesh.Client``,
``AsyncLock`` for a ``zmesh.AsyncClient``, with the same methods and one implementation.
"""

from .barrier import AsyncBarrier, Barrier
from .claim import AsyncClaimed, Claimed
from .election import AsyncElection, Election, Watching
from .lock import AsyncLock, Lock
from .semaphore import AsyncSemaphore, Semaphore
from ._flow import FALLBACK_POLL_S, RECIPE_CAPABILITY
from ._watch import Holder
from .work import WORK_EVENTS, AsyncWorkWaiter, Work, WorkWaiter, wait_for_work

__all__ = [
    "Claimed",
    "AsyncClaimed",
    "Lock",
    "AsyncLock",
    "Semaphore",
    "AsyncSemaphore",
    "Election",
    "AsyncElection",
    "Watching",
    "Barrier",
    "AsyncBarrier",
    "WorkWaiter",
    "AsyncWorkWaiter",
    "Work",
    "wait_for_work",
    "WORK_EVENTS",
    "Holder",
    "RECIPE_CAPABILITY",
    "FALLBACK_POLL_S",
]
