"""The state sets (zmesh/protocol/states.py) and the transition tables of the core.

* Each enum's values are the protocol's tuple and the wire strings, in the same order; a
  member is its string (equality and hashing both ways, str, format, f-strings, orjson),
  on Python 3.11's StrEnum and on the stand-in for 3.10 alike.
* A member written into a record reads back as the plain string, byte for byte what the
  bare string gave.
"""

from __future__ import annotations

import enum
import sys
from typing import Any

import orjson
import pytest

from zmesh import protocol
from zmesh.protocol import ops
from zmesh.protocol.states import (
    AgentState,
    BlockerStatus,
    DeliveryState,
    Liveness,
    Priority,
    Report,
    ReservationMode,
    Severity,
    StrEnum,
    TaskStatus,
    _StrEnum,
    values,
)

#: enum -> the protocol tuple built from it, and the wire strings it has always had
WIRE: list[tuple[type[enum.Enum], tuple[str, ...], tuple[str, ...]]] = [
    (TaskStatus, protocol.STATUSES, ("waiting", "available", "claimed", "completed", "dead")),
    (AgentState, protocol.STATES, ("idle", "busy", "blocked", "help")),
    (Report, protocol.REPORTS, ("idle", "busy", "blocked", "completed", "help")),
    (DeliveryState, protocol.DELIVERY_STATES, ("pending", "delivered", "acked", "dead", "expired")),
    (Priority, protocol.PRIORITIES, ("critical", "high", "normal", "low")),
    (Severity, protocol.SEVERITIES, ("low", "medium", "high", "critical")),
    (ReservationMode, ops.reservations.MODES, ("exclusive", "shared")),
]


# ---------------------------------------------------------------- the enums and the wire
@pytest.mark.parametrize(("states", "derived", "wire"), WIRE, ids=[w[0].__name__ for w in WIRE])
def test_an_enums_values_are_the_protocol_tuple_and_the_wire_strings(
        states: type[enum.Enum], derived: tuple[str, ...], wire: tuple[str, ...]) -> None:
    assert values(states) == derived == wire
    assert all(type(v) is str for v in derived), "the tuples hold plain strings (click, pydantic, docs)"
    assert [m.value for m in states] == list(wire)  # type: ignore[attr-defined]


def test_the_tuples_that_are_not_a_whole_enum() -> None:
    assert protocol.LIVENESS == (Liveness.ALIVE, Liveness.EVASIVE) == ("alive", "evasive")
    assert values(Liveness) == ("alive", "evasive", "gone")  # gone: only agent.expired says it
    assert protocol.BLOCKER_STATUSES == (*values(BlockerStatus), "all") == ("open", "resolved", "all")
    assert all(type(v) is str for v in (*protocol.LIVENESS, *protocol.BLOCKER_STATUSES))


def test_the_ops_choices_are_the_enums() -> None:
    choices = {(op.name, f.name): f.choices for op in protocol.OPS.values() for f in op.fields if f.choices}
    assert choices[("report", "state")] == values(Report)
    assert choices[("blocker_raise", "severity")] == values(Severity)
    assert choices[("blocker_list", "status")] == protocol.BLOCKER_STATUSES
    assert choices[("reserve", "mode")] == values(ReservationMode)
    assert choices[("send", "priority")] == values(Priority)
    assert protocol.KIND_RULES["status"] == "one of " + ", ".join(TaskStatus)


class _Fallback(_StrEnum):
    """The Python 3.10 stand-in, checked on any Python."""

    ONE = "one"
    TWO = "two"


class _Native(StrEnum):
    ONE = "one"
    TWO = "two"


@pytest.mark.parametrize("cls", [_Fallback, _Native], ids=["fallback", "native"])
def test_a_member_is_its_string(cls: Any) -> None:
    one = cls.ONE
    assert one == "one" and "one" == one and one != "two"
    assert hash(one) == hash("one") and {"one": 1}[one] == 1 and {one: 1}["one"] == 1
    assert one in ("one", "x") and "one" in (cls.ONE, cls.TWO)
    assert str(one) == f"{one}" == "{}".format(one) == "%s" % one == "one"  # noqa: UP031, UP032
    assert format(one, ">5") == "  one" and f"{one:<4}|" == "one |"
    assert "agent." + one == "agent.one" and type("agent." + one) is str
    assert one.encode() == b"one" and one.upper() == "ONE"
    assert orjson.dumps({"state": one, "list": [one]}) == b'{"state":"one","list":["one"]}'
    assert type(orjson.loads(orjson.dumps(one))) is str
    assert cls("one") is one and [m.value for m in cls] == ["one", "two"]


def test_the_native_strenum_is_used_where_there_is_one() -> None:
    assert StrEnum is (enum.StrEnum if sys.version_info >= (3, 11) else _StrEnum)  # type: ignore[attr-defined]
    assert issubclass(TaskStatus, str) and issubclass(TaskStatus, enum.Enum)


def test_orjson_refuses_a_member_as_a_key() -> None:
    """Why counts by state are keyed by the plain tuples (states.py says so)."""
    with pytest.raises(TypeError):
        orjson.dumps({TaskStatus.CLAIMED: 1})
    counts = dict.fromkeys(protocol.STATUSES, 0)
    counts[TaskStatus.CLAIMED] += 1  # a member indexes the plain key
    assert orjson.dumps(counts) == b'{"waiting":0,"available":0,"claimed":1,"completed":0,"dead":0}'
