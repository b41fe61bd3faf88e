"""zmesh/adapters/grants.py: the grants a re-issued wait answers again (pure, no I/O)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from zmesh.adapters.grants import Grants

tasks = st.sampled_from(["t1", "t2", "t3", "t4"])
steps = st.lists(st.tuples(st.sampled_from(["add", "settle", "lost"]), tasks), max_size=40)


@given(steps)
def test_grants_match_a_model_of_them(ops: list[tuple[str, str]]) -> None:
    grants = Grants("w0")
    model: dict[str, str] = {}  # task -> handle, oldest first
    seen: set[str] = set()
    for op, task in ops:
        if op == "add":
            grant = grants.add(task)
            if task in model:
                assert grant.handle == model[task]  # a task is one grant
            else:
                assert grant.handle not in seen  # never reused, not even after settling
                model[task] = grant.handle
                seen.add(grant.handle)
        elif op == "settle":
            gone = grants.settle(task)
            assert (gone.handle if gone else None) == model.pop(task, None)
        else:
            assert {g.handle for g in grants.settle_all()} == set(model.values())
            model.clear()
        assert [(g.task, g.handle) for g in grants.outstanding()] == list(model.items())
        assert len(grants) == len(model)
        for t, h in model.items():
            assert t in grants and grants.get(h).task == t  # type: ignore[union-attr]


def test_handles_differ_between_sessions() -> None:
    a, b = Grants(), Grants()
    assert a.prefix != b.prefix and a.add("t").handle != b.add("t").handle
    assert a.get("nope") is None and a.settle("nope") is None
