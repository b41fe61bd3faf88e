"""The presence and blocker ops of the wire protocol (protocol.OPS includes them, in this
order, between the task ops and the snapshot).

Rules it keeps:

* What travels is stated once, here: the broker validates requests with these fields, the
  clients check arguments with them, the CLI builds its options from them and
  docs/PROTOCOL.md is generated from them.
* An agent reports its own presence; the broker also derives it from claims
  (core/presence.py), so a report never contradicts a held claim.
"""

from __future__ import annotations

from ..fields import MAX_COST, MAX_LIST_LIMIT, REPORTS, SEVERITIES, Field, Op
from ..states import BlockerStatus, values

_AGENT = Field("agent", "id", True, doc="agent id")
_THRESHOLD = Field("threshold", "number", default=0.5, lo=0.0, hi=1.0,
                   doc="share of `requires` a helper's capabilities must cover (0..1)")
#: what blocker_list lists: a blocker status, or every blocker
BLOCKER_STATUSES = (*values(BlockerStatus), "all")

PRESENCE_OPS: tuple[Op, ...] = (
    Op(
        "report",
        "An agent reports its presence: `idle`; `busy` (task); `blocked` (reason); "
        "`completed` (task: the agent is idle again and its tasks done count up, once per "
        "task); `help` (reason). Each report is the event `agent.<state>`, published at "
        "once, and renews the lease (an unknown agent gets one). An idle report answers "
        "with the agent's place in the idle queue, a help report with the helpers found "
        "for `requires`. Refused with conflict for idle and completed while the agent "
        "holds a task claim (complete, fail or release it).",
        (
            _AGENT,
            Field("state", "choice", True, doc="one of " + ", ".join(REPORTS), choices=REPORTS),
            Field("task", "id", doc="the task (required for busy and completed)"),
            Field("reason", "text", doc="why (required for blocked and help)"),
            Field("message", "text", doc="a free note shown with the agent"),
            Field("cost", "number", doc="cost spent so far: the agent's running total", lo=0, hi=MAX_COST),
            Field("requires", "namelist", default=[], doc="help: capabilities wanted of helpers"),
            _THRESHOLD,
        ),
        writes=True,
        returns="{agent, state, position, helpers, seq}",
        errors=("bad_request", "conflict"),
    ),
    Op("agent_get", "One agent: presence, liveness, stats (tasks done and failed, cost, "
       "uptime) and the claims it holds.", (_AGENT,), returns="agent", errors=("not_found",)),
    Op(
        "helpers",
        "Idle, alive agents whose capabilities cover at least `threshold` of `requires` "
        "(every idle agent when `requires` is empty): best cover first, then longest waiting.",
        (
            Field("requires", "namelist", default=[], doc="capabilities wanted"),
            _THRESHOLD,
            Field("limit", "int", default=100, lo=1, hi=MAX_LIST_LIMIT),
        ),
        returns="{helpers: [{agent, cover, matched, missing, position, waiting_since}], seq}",
    ),
    Op(
        "blocker_raise",
        "An agent reports a blocker: it becomes `blocked`, `blocker.raised` is published at "
        "once, and the answer names the helpers whose capabilities cover `requires`.",
        (
            _AGENT,
            Field("type", "name", True, doc="kind of blocker (free name: dependency, access, review...)"),
            Field("description", "text", True, doc="what blocks"),
            Field("severity", "choice", default="medium", doc="one of " + ", ".join(SEVERITIES),
                  choices=SEVERITIES),
            Field("requires", "namelist", default=[], doc="capabilities a helper needs"),
            Field("task", "id", doc="the task it blocks (must exist)"),
            _THRESHOLD,
        ),
        writes=True,
        returns="{blocker, helpers, seq}",
        errors=("not_found",),
    ),
    Op(
        "blocker_resolve",
        "Resolve an open blocker: `blocker.resolved` is published; the agent that raised it "
        "is no longer blocked by it (busy again if it holds a task, else idle).",
        (
            Field("blocker", "id", True, doc="blocker id"),
            Field("agent", "id", doc="who resolved it"),
            Field("resolution", "text", doc="how"),
        ),
        writes=True,
        returns="blocker",
        errors=("not_found", "conflict"),
    ),
    Op(
        "blocker_list",
        "Blockers, oldest first: open ones by default.",
        (
            Field("status", "choice", default="open", doc="open, resolved or all",
                  choices=BLOCKER_STATUSES),
            Field("after", "after", default="", doc="the last id of the previous page (empty: from the start)"),
            Field("limit", "int", default=1000, lo=1, hi=MAX_LIST_LIMIT),
        ),
        returns="{blockers: [blocker], more, seq}",
    ),
)

BLOCKER_TOPICS: dict[str, str] = {
    "blocker.raised": "a blocker was raised, by an agent or by the broker (a task waits on a dead one)",
    "blocker.resolved": "a blocker was resolved",
}
