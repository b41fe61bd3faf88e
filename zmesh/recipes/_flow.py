"""What every recipe is made of: the actions a recipe's flow yields, the argument checks,
and the names of the tasks the recipes keep.

Rules it keeps:

* A recipe's logic is a generator, a *flow*, that yields actions and is sent their answers
  (httpcore's pattern). A flow does no I/O of its own and reads no clock but the one it is
  given. Two drivers answer the actions: ``_drive.run`` for :class:`zmesh.Client` and
  ``_drive.arun`` for :class:`zmesh.AsyncClient`. Every recipe is written once, for both.
* A flow reaches the broker only through the public client methods, named in :class:`Call`.
  An error a call raises is thrown into the flow at the ``yield``, so it is handled there,
  as if the flow had made the call itself.
* A flow that took something (a claim) yields :class:`Checkpoint` before it returns it.
  An async caller cancelled before that point is told there. The flow gives back what it
  took and re-raises, so a caller that gave up leaves no claim behind.
* Every argument is checked before any I/O: a bad one raises ``InvalidArgument`` naming it
  in ``details["field"]``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Generator, TypeVar, Union

from zmesh import Client, InvalidArgument

if TYPE_CHECKING:
    from ._watch import Board, Interest

T = TypeVar("T")

#: the capability every recipe task requires. No agent should register it: then
#: ``claim_next`` never hands a lock or an election out as work. The recipes claim their
#: tasks by id, and a claim by id ignores ``requires``.
RECIPE_CAPABILITY = "zmesh.recipe"
#: seconds a waiting recipe sleeps at most before it asks the broker again when no event
#: woke it: a fallback only, because the task events wake waiters at once
FALLBACK_POLL_S = 5.0
#: the broker's limit on a task id (MAX_ID_BYTES of the field rules). zmesh does not export
#: it, so it is mirrored here; tests/test_recipes_args.py pins it against a real broker
TASK_ID_MAX_BYTES = 200
#: the rule of the broker's ``id`` kind: no control characters, no line separators
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


# ---------------------------------------------------------------- actions
@dataclass(frozen=True)
class Call:
    """Call ``client.<method>(*args, **kwargs)``; the answer is its result."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def call(method: str, *args: Any, **kwargs: Any) -> Call:
    return Call(method, args, kwargs)


@dataclass(frozen=True)
class Watch:
    """Make sure the client's task-event subscription is running. The answer is the client's
    :class:`Board`."""


@dataclass(frozen=True)
class Wait:
    """Wait until ``interest`` fires or ``seconds`` pass. The answer is True if it fired."""

    interest: "Interest"
    seconds: float


@dataclass(frozen=True)
class Checkpoint:
    """A point where a cancelled caller is told. The answer is None."""


@dataclass(frozen=True)
class Notify:
    """Call ``callback(*args)``. The async driver awaits the result when it is awaitable."""

    callback: Callable[..., Any]
    args: tuple[Any, ...] = ()


Action = Union[Call, Watch, Wait, Checkpoint, Notify]
Flow = Generator[Action, Any, T]


def watch() -> Generator[Action, Any, "Board"]:
    board: Board = yield Watch()
    return board


# ---------------------------------------------------------------- argument checks
def check_name(value: Any, *, prefix: str, suffix: str = "", field: str = "name") -> str:
    """A recipe's name. It becomes the task id ``prefix + name + suffix``, so the id kind's
    rules apply: 1..200 bytes of UTF-8, no control characters."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be a string, not {type(value).__name__}", {"field": field})
    if not value:
        raise InvalidArgument(f"{field} must not be empty", {"field": field})
    if _CONTROL.search(value):
        raise InvalidArgument(f"{field} must not contain control characters", {"field": field})
    try:
        size = len((prefix + value + suffix).encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(f"{field} is not valid UTF-8 (a lone surrogate)", {"field": field}) from None
    if size > TASK_ID_MAX_BYTES:
        room = TASK_ID_MAX_BYTES - len((prefix + suffix).encode("utf-8"))
        raise InvalidArgument(f"{field} is too long: the task id {prefix!r} + name{' + ' + repr(suffix) if suffix else ''} "
                              f"would have {size} bytes; names here take at most {room} bytes of UTF-8",
                              {"field": field, "limit": room})
    return value


def check_count(field: str, value: Any, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
        raise InvalidArgument(f"{field} must be an integer in 1..{hi}, got {value!r}", {"field": field})
    return value


def check_timeout(field: str, value: Any) -> float | None:
    """None (wait as long as it takes) or a finite number of seconds >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"{field} must be None or a number of seconds >= 0, got {value!r}", {"field": field})
    return float(value)


def check_seconds(field: str, value: Any) -> float:
    """A finite number of seconds > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidArgument(f"{field} must be a number of seconds > 0, got {value!r}", {"field": field})
    return float(value)


def check_ttl(field: str, value: Any) -> float | None:
    """A claim TTL: None (the claim lives as long as the agent's lease) or seconds > 0; the
    broker's own bounds are checked by the client when it sends it."""
    return None if value is None else check_seconds(field, value)


def check_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{field} must be True or False, got {value!r}", {"field": field})
    return value


def check_callable(field: str, value: Any, *, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if not callable(value):
        raise InvalidArgument(f"{field} must be callable, not {type(value).__name__}", {"field": field})
    return value


def check_client(client: Any, cls: type, what: str) -> None:
    """A sync recipe takes a Client, its Async twin an AsyncClient."""
    if not isinstance(client, cls):
        twin = "its Async twin with an AsyncClient" if cls is Client else "its sync twin with a Client"
        raise InvalidArgument(f"{what} needs a zmesh.{cls.__name__}, not {type(client).__name__} (use {twin})",
                              {"field": "client"})


def agent_of(client: Any, what: str) -> str:
    """The client's agent: claims are held by an agent, so a recipe that holds needs one."""
    agent = getattr(client, "agent", None)
    if not agent:
        raise InvalidArgument(f"{what} needs a client made with agent=...: claims are held by an agent's lease",
                              {"field": "agent"})
    return str(agent)


class Deadline:
    """When a wait gives up, on the clock it was given (None: never)."""

    def __init__(self, clock: Callable[[], float], timeout: float | None) -> None:
        self.clock = clock
        self.start = clock()
        self.at = None if timeout is None else self.start + timeout

    def left(self) -> float | None:
        return None if self.at is None else self.at - self.clock()

    def passed(self) -> bool:
        return self.at is not None and self.clock() >= self.at

    def step(self, poll: float | None) -> float:
        """How long the next wait may last: until the deadline, at most ``poll``."""
        left = self.left()
        if left is None:
            return poll if poll is not None else 3600.0
        return max(0.0, left if poll is None else min(left, poll))

    def elapsed(self) -> float:
        return self.clock() - self.start
