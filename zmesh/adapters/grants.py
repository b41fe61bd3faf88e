"""The work a session handed out that its caller may never have seen: what makes a re-issued
``wait_for_work`` safe.

A caller of the MCP server or the HTTP gateway can lose an answer in transit: the MCP
revision of 2026-07-28 is stateless and drops resumability (a broken response stream loses
the in-flight call, and the client calls again), and an HTTP long poll dies with its
connection. A wait that claimed a task as it answered must then not claim a second one.

Rules it keeps:

* A grant is a task this agent holds because a wait handed it out: claimed by the wait, or
  assigned to the agent and answered by a wait, or a claim of this agent's lease found at
  the session's start (an earlier process of the same agent). Each grant has a handle that
  is unique in this process (a random prefix and a counter) and never reused.
* A grant stays outstanding until its claim ends as the session knows it: complete, fail or
  release, the lease lost, or a check at the broker that finds the claim gone. Then it is
  settled and never handed out again.
* The next wait answers the oldest outstanding grant again instead of waiting (a call that
  names a handle gets that grant), so a lost answer is answered again, and no second task is
  claimed while the first is unsettled.
* Pure: no I/O, no clock. The session checks a grant at the broker before it answers it
  again (zmesh/adapters/session.py).
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Grant:
    """One task handed out: its handle, and how it came (``assigned``: pushed by an
    assignment; ``adopted``: found on the lease at the session's start)."""

    handle: str
    task: str
    assigned: bool = False
    adopted: bool = False


class Grants:
    """The outstanding grants of one session, oldest first (see the module rules)."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix if prefix is not None else "w" + secrets.token_hex(3)
        self._numbers = itertools.count(1)
        self._by_task: dict[str, Grant] = {}

    def add(self, task: str, *, assigned: bool = False, adopted: bool = False) -> Grant:
        """The grant of ``task``: a new one, or the one it already has (a task is one grant)."""
        grant = self._by_task.get(task)
        if grant is None:
            grant = Grant(f"{self.prefix}-{next(self._numbers)}", task, assigned, adopted)
            self._by_task[task] = grant
        return grant

    def get(self, handle: str) -> Grant | None:
        return next((g for g in self._by_task.values() if g.handle == handle), None)

    def outstanding(self) -> Iterator[Grant]:
        """Every outstanding grant, oldest first (a snapshot: settling while iterating is safe)."""
        return iter(list(self._by_task.values()))

    def settle(self, task: str) -> Grant | None:
        """``task``'s claim ended: its grant (if any) is never handed out again."""
        return self._by_task.pop(task, None)

    def settle_all(self) -> list[Grant]:
        """The lease is gone: every grant with it."""
        gone = list(self._by_task.values())
        self._by_task.clear()
        return gone

    def __len__(self) -> int:
        return len(self._by_task)

    def __contains__(self, task: str) -> bool:
        return task in self._by_task
