"""The priority policy (zmesh/broker/lanes.py), pure: no broker, no clock but the one passed in."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from zmesh.broker.lanes import LANE, LOW_BACKLOG_BYTES, LOW_LANE, MAIN_LANE, Lanes, lane


@dataclass
class Req:
    name: str
    lane: int
    body: bytes = b"{}"


def test_only_a_message_op_carries_a_priority() -> None:
    assert lane("send", {"priority": "critical"}) == LANE["critical"]
    assert lane("assign", {"priority": "low"}) == LOW_LANE
    assert lane("claim", {"priority": "low"}) == MAIN_LANE  # a claim is never low work
    assert MAIN_LANE == LANE["high"]


def test_urgent_work_goes_most_urgent_first_in_arrival_order_and_low_work_waits() -> None:
    lanes: Lanes[Req] = Lanes(low_batch=0.5, max_batch=512)
    reqs = [Req("n1", LANE["normal"]), Req("low1", LOW_LANE), Req("claim", MAIN_LANE), Req("c1", LANE["critical"]),
            Req("n2", LANE["normal"]), Req("c2", LANE["critical"])]
    assert [r.name for r in lanes.split(reqs, now=10.0)] == ["c1", "c2", "claim", "n1", "n2"]
    assert len(lanes) == 1 and lanes.low_bytes == 2
    assert lanes.due(urgent=True, now=10.1) == 0  # more urgent work came, and it waited less than low_batch
    assert lanes.due(urgent=True, now=10.5) == 1  # it waited low_batch
    assert lanes.due(urgent=False, now=10.1) == 1  # a pass with nothing more urgent
    assert [r.name for r in lanes.take(5)] == ["low1"] and len(lanes) == 0 and lanes.low_bytes == 0
    assert lanes.due(urgent=False, now=11.0) == 0


def test_a_backlog_over_its_byte_budget_goes_a_full_batch_per_pass() -> None:
    lanes: Lanes[Req] = Lanes(low_batch=60.0, max_batch=512)
    big = b"x" * (LOW_BACKLOG_BYTES // 600 + 1)
    lanes.split([Req(f"l{i}", LOW_LANE, big) for i in range(600)], now=0.0)
    assert lanes.low_bytes > LOW_BACKLOG_BYTES
    assert lanes.due(urgent=True, now=0.0) == 512
    lanes.take(512)
    assert lanes.low_bytes <= LOW_BACKLOG_BYTES and lanes.due(urgent=True, now=0.0) == 0


@given(st.lists(st.tuples(st.sampled_from(sorted(LANE.values())), st.booleans()), max_size=60))
def test_nothing_deferred_is_lost_or_reordered(plan: list[tuple[int, bool]]) -> None:
    """Passes of random requests (the flag: a new pass starts here): every request is applied
    exactly once, urgent ones in their pass, low ones oldest first."""
    lanes: Lanes[Req] = Lanes(low_batch=1.0, max_batch=512)
    applied: list[str] = []
    now, batch = 0.0, []
    for i, (which, new_pass) in enumerate([*plan, (MAIN_LANE, True)]):
        batch.append(Req(f"r{i}", which))
        if new_pass:
            now += 0.3
            urgent = lanes.split(batch, now)
            applied += [r.name for r in urgent]
            applied += [r.name for r in lanes.take(lanes.due(bool(urgent), now))]
            batch = []
    applied += [r.name for r in lanes.take(len(lanes))]  # a stop drains the rest
    made = [f"r{i}" for i in range(len(plan) + 1)]
    assert sorted(applied) == sorted(made)
    lows = [f"r{i}" for i, (which, _) in enumerate(plan) if which == LOW_LANE]
    assert [name for name in applied if name in set(lows)] == lows
