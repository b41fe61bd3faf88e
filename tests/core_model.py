"""The model the state-machine test (test_core_properties.py) drives the core against: its
task and agent records, the fixed sizes and the hypothesis strategies, shared by the
machine and its presence rules (core_presence_model.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st

N_TASKS = 6
AGENTS = ("a0", "a1", "a2", "a3")
CAPS = ("x", "y", "z")
DEFAULT_TTL = 5.0
TTLS = st.sampled_from([None, 1.0, 2.0, 4.0, 12.0])
MAX_TTL = 12.0  # the largest TTL any lease or claim can get here
WALL0 = 1_700_000_000.0

task_index = st.integers(0, N_TASKS - 1)
#: most requests name a task that exists (index into the created ones), some any id
known = st.sampled_from([True, True, True, False])
agents = st.sampled_from(AGENTS)
who = st.sampled_from(("owner",) * 6 + AGENTS)
token_mode = st.sampled_from(["current"] * 3 + ["none"] * 2 + ["stale", "future"])
caps = st.lists(st.sampled_from(CAPS), unique=True, max_size=3)
requires = st.lists(st.sampled_from(CAPS), unique=True, max_size=2)
deps = st.lists(st.integers(0, N_TASKS - 2), unique=True, max_size=3)


@dataclass
class MTask:
    id: str
    priority: int
    requires: list[str]
    max_attempts: int
    depends_on: list[str]
    order: int
    status: str
    attempts: int = 0
    owner: str | None = None
    token: int | None = None
    tokens: list[int] = field(default_factory=list)  # every token granted on this task
    completed_by: str | None = None
    completed_token: int | None = None
    frozen: dict[str, Any] | None = None  # the view at completion; never changes again
    ended: list[tuple[int, str, str]] = field(default_factory=list)  # history: (token, agent, reason)


@dataclass
class MAgent:
    caps: list[str]
    ttl: float
    implicit: bool
    lease: int | None = None
    claims: int = 0
    completed: int = 0
    failed: int = 0
    state: str = "idle"  # stored presence; a task claim makes an idle agent busy
    idle_order: int = 0
    last_completed: str | None = None
    evasive: bool = False
    blocker: str | None = None
