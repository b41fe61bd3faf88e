"""The state sets (zmesh/protocol/states.py) and the transition tables of the core.

* Each enum's values are the protocol's tuple and the wire strings, in the same order; a
  member is its string (equality and hashing both ways, str, format, f-strings, orjson),
  on Python 3.11's StrEnum and on the stand-in for 3.10 alike.
* A member written into a record reads back as the plain string, byte for byte what the
  bare string gave.
* Every delivery, task and blocker state change the core makes is in its TRANSITIONS
  table, each entry of a table is reached by the scenarios here (driven through the core
  harness as the broker drives it), and a change outside the table is an AssertionError
  (a bug: the handlers check first).
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from zmesh import protocol
from zmesh.core.blockers import TRANSITIONS as BLOCKER_TRANSITIONS
from zmesh.core.blockers import Blockers
from zmesh.core.deliveries import ACKED, DEAD, DELIVERED, EXPIRED, PENDING, Deliveries
from zmesh.core.deliveries import TRANSITIONS as DELIVERY_TRANSITIONS
from zmesh.core.tasks import AVAILABLE, Tasks
from zmesh.core.tasks import TRANSITIONS as TASK_TRANSITIONS
from zmesh.errors import Conflict
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

from .test_messages_core import MsgHarness, send

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


# ---------------------------------------------------------------- the transition tables
Triple = tuple[str, str, str]
Table = dict[tuple[str, str], tuple[str, ...]]
MACHINES: dict[str, tuple[Any, Table]] = {
    "delivery": (Deliveries, DELIVERY_TRANSITIONS),
    "task": (Tasks, TASK_TRANSITIONS),
    "blocker": (Blockers, BLOCKER_TRANSITIONS),
}


def triples(table: Table) -> set[Triple]:
    return {(old, action, new) for (old, action), news in table.items() for new in news}


@pytest.fixture
def observed(monkeypatch: pytest.MonkeyPatch) -> dict[str, set[Triple]]:
    """Every (old, action, new) a machine's one transition function makes, by machine."""
    seen: dict[str, set[Triple]] = {name: set() for name in MACHINES}

    def recorder(original: Callable[[dict[str, Any], str, str], str], into: set[Triple]
                 ) -> Callable[[dict[str, Any], str, str], str]:
        def transition(record: dict[str, Any], action: str, new: str) -> str:
            old = original(record, action, new)  # raises AssertionError outside the table
            into.add((old, action, new))
            return old
        return transition

    for name, (cls, _) in MACHINES.items():
        monkeypatch.setattr(cls, "transition", staticmethod(recorder(cls.transition, seen[name])))
    return seen


@pytest.fixture(params=["memory", "lmdb"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MsgHarness]:
    harness = MsgHarness(request.param, tmp_path / "data")
    try:
        yield harness
    finally:
        harness.close()


def test_every_delivery_change_is_in_the_table_and_every_entry_is_reached(
        h: MsgHarness, observed: dict[str, set[Triple]]) -> None:
    seen = observed["delivery"]

    def step(*expected: Triple) -> None:
        assert set(expected) <= seen, f"not seen: {set(expected) - seen}"
        seen_so_far.update(seen)
        seen.clear()
    seen_so_far: set[Triple] = set()

    plain = send(h, to="a")["id"]  # a is offline: its copy is pending
    h.connect("a", b"R1", ttl=60.0)
    step((PENDING, "deliver", DELIVERED))
    h.do("ack", agent="a", id=plain)
    step((DELIVERED, "ack", ACKED))
    h.do("ack", agent="b", id=send(h, to="b")["id"])  # acked before b ever came
    step((PENDING, "ack", ACKED))

    late = send(h, to="b", expires_in=1.0)["id"]
    h.at(h.mono + 2.0)
    h.connect("b", b"RB", ttl=60.0)  # it would go now, but it expired meanwhile
    step((PENDING, "expire", EXPIRED))
    h.do("ack", agent="b", id=late)  # an expired entry may still be acked
    step((EXPIRED, "ack", ACKED))

    again = send(h, to="a", requires_ack=True, ack_wait=1.0, max_deliver=2)["id"]
    step((PENDING, "deliver", DELIVERED))
    h.expire(h.mono + 1.5)  # the ack deadline: pending again, and out again at once
    step((DELIVERED, "unacked", PENDING), (PENDING, "deliver", DELIVERED))
    h.expire(h.mono + 1.5)  # the second delivery unacked: max_deliver reached
    step((DELIVERED, "unacked", DEAD))
    h.do("requeue", id=again)  # a dead letter requeued goes again (a is connected)
    step((DEAD, "requeue", PENDING), (PENDING, "deliver", DELIVERED))
    h.on(b"R2", "heartbeat", agent="a")  # a reconnect: the delivery awaiting its ack goes again
    step((DELIVERED, "unacked", PENDING), (PENDING, "deliver", DELIVERED))
    assert [p.route for p in h.pushes if p.agent == "a"][-1] == b"R2"

    once = send(h, to="b", requires_ack=True, ack_wait=1.0, max_deliver=1)["id"]
    h.on(b"RB", "heartbeat", agent="b")
    h.expire(h.mono + 1.5)
    step((DELIVERED, "unacked", DEAD))
    h.do("ack", agent="b", id=once)  # acking a dead letter settles it
    step((DEAD, "ack", ACKED))

    send(h, to="b", requires_ack=True, expires_in=2.0, ack_wait=1.5)
    h.expire(h.mono + 2.5)  # its ack deadline came after it expired: expired, not again
    step((DELIVERED, "expire", EXPIRED))

    send(h, to="b")
    refused = [p for p in h.pushes if p.agent == "b"][-1:]
    with h.store.write() as txn:  # the transport refused the push: the connection is gone
        h.core.undeliverable(h.core.batch(txn, h.now()), refused)
    step((DELIVERED, "undeliverable", PENDING))

    h.connect("c", b"RC", ttl=1.0)
    send(h, to="c", requires_ack=True, ack_wait=60.0)
    h.expire(h.mono + 2.0)  # c's lease lapsed: its delivery is pending for its next connection
    step((DELIVERED, "unacked", PENDING))

    assert seen_so_far == triples(DELIVERY_TRANSITIONS), "a table entry no scenario reaches"


def test_every_task_change_is_in_the_table_and_every_entry_is_reached(
        h: MsgHarness, observed: dict[str, set[Triple]]) -> None:
    h.do("task_create", id="first")
    h.do("task_create", id="then", depends_on=["first"])
    token = h.do("claim", task="first", agent="a")["token"]
    h.do("complete", task="first", agent="a", token=token)  # "then" is available now
    h.do("claim", task="then", agent="a")
    h.do("fail", task="then", agent="a", error="flaky")  # attempts left: available again
    h.do("claim", task="then", agent="a")
    h.do("release", task="then", agent="a")
    h.do("task_create", id="once", max_attempts=1)
    h.do("claim", task="once", agent="a")
    h.do("fail", task="once", agent="a", error="broken")  # the last attempt: dead
    h.do("admin_requeue", task="once")
    h.do("register", agent="short", ttl=1.0)
    h.do("claim", task="once", agent="short")
    h.expire(h.mono + 2.0)  # the lease lapsed: the claim ends as a release
    assert h.do("task_get", task="once")["status"] == AVAILABLE
    assert observed["task"] == triples(TASK_TRANSITIONS)


def test_a_blocker_is_resolved_once_through_its_table(h: MsgHarness, observed: dict[str, set[Triple]]) -> None:
    blocker = h.do("blocker_raise", agent="a", type="access", description="no key")["blocker"]
    assert blocker["status"] == BlockerStatus.OPEN
    h.do("blocker_resolve", blocker=blocker["id"], agent="b")
    h.refused(Conflict, "blocker_resolve", blocker=blocker["id"])  # the handler checks first
    assert observed["blocker"] == triples(BLOCKER_TRANSITIONS) == {
        (BlockerStatus.OPEN, "resolve", BlockerStatus.RESOLVED)}


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_a_change_outside_the_table_is_an_assertion_error(machine: str) -> None:
    cls, table = MACHINES[machine]
    field = "state" if machine == "delivery" else "status"
    states = {old for old, _ in table} | {new for news in table.values() for new in news}
    legal = triples(table)
    tried = 0
    for old in sorted(states):
        for action in sorted({a for _, a in table}):
            for new in sorted(states):
                if (old, action, new) in legal:
                    continue
                record = {field: old}
                with pytest.raises(AssertionError, match=f"illegal .*transition {old} -{action}-> {new}"):
                    cls.transition(record, action, new)
                assert record == {field: old}, "a refused transition changed the record"
                tried += 1
    assert tried
    old, action = next(iter(table))
    record = {field: old}
    assert cls.transition(record, action, table[(old, action)][0]) == old
    assert record[field] == table[(old, action)][0]


def test_the_tables_name_only_their_machines_states() -> None:
    for states, table in ((DeliveryState, DELIVERY_TRANSITIONS), (TaskStatus, TASK_TRANSITIONS),
                          (BlockerStatus, BLOCKER_TRANSITIONS)):
        named = {old for old, _ in table} | {new for news in table.values() for new in news}
        assert named <= set(values(states)), named - set(values(states))
        assert all(isinstance(s, states) for s in named), "the tables are written with the members"


# ---------------------------------------------------------------- stored records
def test_members_are_stored_as_their_strings(h: MsgHarness) -> None:
    """A member written into a record reads back as the plain string, and the record is the
    bytes the bare string gave (re-encoding what was read is the same bytes)."""
    h.connect("a", b"R1")
    mid = send(h, to="a", requires_ack=True)["id"]
    h.do("task_create", id="t")
    h.do("claim", task="t", agent="a")
    h.do("blocker_raise", agent="a", type="access", description="no key", severity=Severity.HIGH)
    h.do("report", agent="b", state=Report.HELP, reason="stuck")
    with h.store.read() as txn:
        tables = {t: [bytes(v) for _, v in txn.scan(t)] for t in ("inbox", "tasks", "blockers", "agents", "events")}
    records = {t: [orjson.loads(raw) for raw in raws if raw[:1] == b"{"] for t, raws in tables.items()}
    for raws in tables.values():
        for raw in raws:
            if raw[:1] == b"{":
                assert orjson.dumps(orjson.loads(raw)) == raw
    inbox = records["inbox"][0]
    assert inbox["state"] == DeliveryState.DELIVERED and type(inbox["state"]) is str
    assert b'"state":"delivered"' in tables["inbox"][0]
    task = next(r for r in records["tasks"] if "status" in r)
    assert task["status"] == "claimed" and type(task["status"]) is str
    blocker = records["blockers"][0]
    assert (blocker["status"], blocker["severity"]) == ("open", "high") and type(blocker["status"]) is str
    agents = {r["id"]: r for r in records["agents"]}
    assert agents["a"]["state"] == AgentState.BLOCKED and agents["b"]["state"] == "help"
    assert all(type(r["state"]) is str for r in agents.values())
    assert h.do("message_get", id=mid)["recipients"][0]["state"] == "delivered"
    events = [e for e in h.events if e.topic == "agent.registered"]
    assert orjson.loads(orjson.dumps(events[0].body))["state"] == "idle"
