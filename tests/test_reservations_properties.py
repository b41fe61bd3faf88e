"""Reservations as a hypothesis state machine: any sequence of reserve (shared or exclusive,
several patterns), release and lease lapse, against a model that decides conflicts by brute
force over a universe of paths (not with zmesh/protocol/globs.py). Invariants: the broker holds
exactly what the model holds, and no two agents ever hold overlapping patterns where one is
exclusive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from zmesh.errors import Conflict, NotFound
from zmesh.protocol.globs import normalize

from .test_core import Harness
from .test_globs import UNIVERSE, _brute_matches

AGENTS = ("a", "b", "c")
_segment = st.lists(st.sampled_from(["a", "b", "*", "?"]), min_size=1, max_size=2).map("".join)
PATTERN = st.lists(st.one_of(_segment, st.just("**")), min_size=1, max_size=2).map(lambda s: normalize("/".join(s)))
_covers: dict[str, frozenset[str]] = {}


def covers(pattern: str) -> frozenset[str]:
    """Every path of the universe the pattern matches (brute force, cached)."""
    if pattern not in _covers:
        _covers[pattern] = frozenset(p for p in UNIVERSE if _brute_matches(pattern, p))
    return _covers[pattern]


def clash(p: str, mode: str, q: str, other_mode: str) -> bool:
    return "exclusive" in (mode, other_mode) and bool(covers(p) & covers(q))


class ReservationMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.h = Harness("memory", Path("/nonexistent"))
        self.held: dict[tuple[str, str], str] = {}  # (agent, pattern) -> mode
        for agent in AGENTS:
            self.h.do("register", agent=agent, ttl=600)

    def teardown(self) -> None:
        self.h.close()

    def run(self, op: str, **body: Any) -> Any:
        try:
            return self.h.do(op, **body)
        except (Conflict, NotFound) as exc:
            return exc

    @rule(agent=st.sampled_from(AGENTS), patterns=st.lists(PATTERN, min_size=1, max_size=3, unique=True),
          exclusive=st.booleans())
    def reserve(self, agent: str, patterns: list[str], exclusive: bool) -> None:
        mode = "exclusive" if exclusive else "shared"
        blocked = any(clash(p, mode, q, m) for p in patterns for (who, q), m in self.held.items() if who != agent)
        got = self.run("reserve", agent=agent, paths=patterns, mode=mode)
        if blocked:
            assert isinstance(got, Conflict), (agent, patterns, mode, self.held, got)
            return
        assert not isinstance(got, Exception), (agent, patterns, mode, self.held, got)
        for p in patterns:
            self.held[(agent, p)] = mode

    @rule(agent=st.sampled_from(AGENTS), data=st.data())
    def release(self, agent: str, data: st.DataObject) -> None:
        mine = sorted(p for (who, p) in self.held if who == agent)
        some = data.draw(st.lists(st.sampled_from(mine), unique=True)) if mine else []
        got = self.run("release_paths", agent=agent, paths=some)
        assert sorted(got["released"]) == sorted(some or mine)
        for p in some or mine:
            del self.held[(agent, p)]

    @rule(agent=st.sampled_from(AGENTS))
    def lapse(self, agent: str) -> None:
        """The agent's lease ends (it unregisters): every reservation it held goes."""
        self.h.do("unregister", agent=agent)
        self.held = {k: m for k, m in self.held.items() if k[0] != agent}
        self.h.do("register", agent=agent, ttl=600)

    @invariant()
    def broker_holds_what_the_model_holds(self) -> None:
        rows = self.h.do("reservations")["reservations"]
        assert {(r["agent"], r["pattern"]): r["mode"] for r in rows} == self.held

    @invariant()
    def no_two_agents_hold_a_conflict(self) -> None:
        items = list(self.held.items())
        for i, ((a, p), m) in enumerate(items):
            for (b, q), n in items[i + 1:]:
                assert a == b or not clash(p, m, q, n), ((a, p, m), (b, q, n))


ReservationMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
test_reservations_state_machine = ReservationMachine.TestCase
