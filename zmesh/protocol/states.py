"""The named state sets of zmesh, one StrEnum each: the one place their wire strings are written.

Rules it keeps:

* A member *is* its wire string: ``TaskStatus.CLAIMED == "claimed"``, it hashes as that
  string, ``str()``, ``format()`` and f-strings give the value, and orjson writes the value.
  So a record or a reply holding a member is byte for byte what it was with the bare
  string, and a value read back from the store (a plain ``str``) compares equal to the
  member, both ways round.
* The protocol's tuples are derived from these enums, in member order, as plain strings
  (:func:`values`): ``fields.STATUSES``, ``STATES``, ``REPORTS``, ``PRIORITIES``,
  ``SEVERITIES``, ``DELIVERY_STATES``, ``ops.agents.LIVENESS``,
  ``ops.presence.BLOCKER_STATUSES`` and ``ops.reservations.MODES``. The CLI's choices, the
  MCP and HTTP schemas and the generated docs are built from those tuples and do not
  change (a tuple of members would: click 8.2 shows an enum choice by its name).
* A member is never a key of a dict that is encoded: orjson refuses a ``str`` subclass as
  a key. Count by state with ``dict.fromkeys(STATES, 0)`` (plain keys), then index it
  with members or strings alike.
* Which changes between states are legal is the core's, in one ``TRANSITIONS`` table per
  machine (core/tasks.py, core/deliveries.py, core/blockers.py); this module only names
  the states.
* On Python 3.11 a member looked up on its class (``TaskStatus.CLAIMED``) costs ~70 ns
  more than a literal, measured. Code that compares states on every request (tasks.py,
  deliveries.py, presence.py, agents.py, reservations.py) binds the members to module
  names once (``CLAIMED = TaskStatus.CLAIMED``), which cost what a literal does, so the
  claim path pays nothing for the names; code off that path names them on their class.
* Pure: no I/O. Python 3.10 has no ``enum.StrEnum``; :class:`_StrEnum` stands in for it.
"""

from __future__ import annotations

import sys
from enum import Enum


class _StrEnum(str, Enum):
    """``enum.StrEnum`` for Python 3.10: a member is a ``str``, and ``str()`` and
    ``format()`` give its value (a plain ``(str, Enum)`` would show ``Cls.NAME``)."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)


if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - exercised on Python 3.10 only (tests check _StrEnum directly)
    StrEnum = _StrEnum


def values(states: type[Enum]) -> tuple[str, ...]:
    """The wire strings of an enum's members, in member order (plain ``str``)."""
    return tuple(str(member.value) for member in states)


class TaskStatus(StrEnum):
    """A task's status (core/tasks.py draws the transitions)."""

    WAITING = "waiting"  #: a dependency is not completed yet
    AVAILABLE = "available"  #: claimable
    CLAIMED = "claimed"  #: held by one agent's claim
    COMPLETED = "completed"  #: done (final)
    DEAD = "dead"  #: failed max_attempts times; only an admin requeue brings it back


class AgentState(StrEnum):
    """An agent's presence state as shown (a report sets it; claiming makes an agent busy)."""

    IDLE = "idle"
    BUSY = "busy"
    BLOCKED = "blocked"
    HELP = "help"


class Report(StrEnum):
    """What an agent may report: a state, or ``completed`` (a moment: tasks done + 1, then
    idle again)."""

    IDLE = "idle"
    BUSY = "busy"
    BLOCKED = "blocked"
    COMPLETED = "completed"
    HELP = "help"


class Liveness(StrEnum):
    """An agent's liveness, graded from its lease's clock (core/agents.py)."""

    ALIVE = "alive"  #: heard from within EVASIVE_AFTER of its TTL
    EVASIVE = "evasive"  #: a heartbeat period missed; its claims stand
    GONE = "gone"  #: the lease lapsed (said by ``agent.expired``; no record is left to show it)


class DeliveryState(StrEnum):
    """A recipient's copy of a message, its inbox entry (core/deliveries.py draws the
    transitions)."""

    PENDING = "pending"  #: waiting for the agent (its lease and its connection)
    DELIVERED = "delivered"  #: handed to the agent's connection (a requires_ack one awaits its ack)
    ACKED = "acked"  #: acknowledged (final)
    DEAD = "dead"  #: max_deliver deliveries went unacked: a dead letter until requeued
    EXPIRED = "expired"  #: expires_at passed before it went out or went again


class BlockerStatus(StrEnum):
    """A blocker is open until it is resolved, once (core/blockers.py)."""

    OPEN = "open"
    RESOLVED = "resolved"


class Priority(StrEnum):
    """A message's priority, most urgent first: a delivery lane each."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class Severity(StrEnum):
    """How bad a blocker is, least first."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class ReservationMode(StrEnum):
    """How a path reservation is held (core/reservations.py decides the conflicts)."""

    EXCLUSIVE = "exclusive"
    SHARED = "shared"
