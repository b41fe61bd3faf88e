"""The task ops of the wire protocol: create, claim, claim_next, complete, fail, release,
renew; task_get and task_list; the task events. protocol.OPS takes the writes after the agent
ops and the reads after ``publish``.

Rules it keeps:

* What travels is stated once, here (see ops/agents.py).
* One claim machinery: a claim is exactly one winner with a fencing token; an op that names a
  token is refused when it is not the current one (``stale_token``), so a deposed holder can
  never complete or release what another now holds.
"""

from __future__ import annotations

from ..fields import (MAX_ATTEMPTS, MAX_INT, MAX_LIST_LIMIT, MAX_PRIORITY, MAX_TTL_S, MIN_TTL_S, STATUSES, Field,
                      Op)

_AGENT = Field("agent", "id", True, doc="agent id")
_TASK = Field("task", "id", True, doc="task id")
_TOKEN = Field("token", "int", doc="fencing token of the claim; when given it must be current", lo=1, hi=MAX_INT)
_TTL = Field("ttl", "ttl", doc="seconds", lo=MIN_TTL_S, hi=MAX_TTL_S)

#: the writes, in the table's order
TASK_OPS: tuple[Op, ...] = (
    Op(
        "task_create",
        "Create a task. It is `waiting` while any dependency is not completed, else `available`.",
        (
            Field("id", "id", True, doc="task id"),
            Field("type", "name", default="task", doc="free task type"),
            Field("data", "json", default=None, doc="any JSON value"),
            Field("priority", "int", default=0, doc="higher is claimed first", lo=-MAX_PRIORITY, hi=MAX_PRIORITY),
            Field("requires", "namelist", default=[], doc="capabilities an agent needs for claim_next"),
            Field("max_attempts", "int", default=3, doc="failures before the task is dead", lo=1, hi=MAX_ATTEMPTS),
            Field("depends_on", "idlist", default=[], doc="task ids that must complete first"),
        ),
        writes=True,
        returns="task",
        errors=("conflict",),
    ),
    Op(
        "claim",
        "Claim a task by id. Exactly one of any number of racers wins. An agent with no "
        "lease gets one (TTL `ttl` or the broker default). Re-claiming a task one already "
        "holds returns the same claim.",
        (_TASK, _AGENT, Field("ttl", "ttl", doc="claim TTL in seconds; without it the claim lives as long as the agent's lease", lo=MIN_TTL_S, hi=MAX_TTL_S)),
        writes=True,
        returns="{task, agent, token, lease, expires_in}",
        errors=("not_found", "conflict"),
    ),
    Op(
        "claim_next",
        "Claim the best available task whose `requires` the agent's capabilities cover "
        "(highest priority, then oldest). Returns null when there is none.",
        (
            _AGENT,
            Field("capabilities", "namelist", default=None, doc="defaults to the registered capabilities"),
            _TTL,
        ),
        writes=True,
        returns="{task, agent, token, lease, expires_in} | null",
    ),
    Op(
        "complete",
        "Complete a claimed task (owner and current token only); the result is stored "
        "and tasks waiting on it become available.",
        (_TASK, _AGENT, _TOKEN, Field("result", "json", default=None, doc="any JSON value")),
        writes=True,
        returns="task",
        errors=("not_found", "not_owner", "stale_token", "lease_expired", "claim_expired"),
    ),
    Op(
        "fail",
        "Record a failed attempt. The task returns to `available`, or becomes `dead` "
        "after max_attempts failures.",
        (_TASK, _AGENT, _TOKEN, Field("error", "text", True, doc="what went wrong")),
        writes=True,
        returns="task",
        errors=("not_found", "not_owner", "stale_token", "lease_expired", "claim_expired"),
    ),
    Op(
        "release",
        "Give a claimed task back: it becomes `available` again (no attempt counted).",
        (_TASK, _AGENT, _TOKEN),
        writes=True,
        returns="task",
        errors=("not_found", "not_owner", "stale_token", "lease_expired", "claim_expired"),
    ),
    Op(
        "renew",
        "Extend a claim during long work (progress) and renew the agent's lease (for at "
        "least `ttl` when given, as a claim with a ttl does, so the lease does not cut the "
        "claim short).",
        (_TASK, _AGENT, _TOKEN, _TTL),
        returns="{task, agent, token, lease, expires_in}",
        errors=("not_found", "not_owner", "stale_token", "lease_expired", "claim_expired"),
    ),
)

#: the reads
TASK_READ_OPS: tuple[Op, ...] = (
    Op("task_get", "One task with its claim.", (_TASK,), returns="task", errors=("not_found",)),
    Op(
        "task_list",
        "Tasks in id order, optionally of one status; `after` (the last id of the previous "
        "page) pages. Available tasks are listed in claim order (priority, then age).",
        (
            Field("status", "status", doc="one of " + ", ".join(STATUSES)),
            Field("after", "after", default="", doc="the last id of the previous page (empty: from the start)"),
            Field("limit", "int", default=1000, lo=1, hi=MAX_LIST_LIMIT),
        ),
        returns="{tasks: [task], seq, more}",
    ),
    Op(
        "task_next",
        "The task claim_next would take now (highest priority, then oldest, `requires` covered), "
        "without claiming it; null when there is none. A wait that only names its work reads "
        "this, so the claim order is the broker's alone.",
        (
            Field("agent", "id", doc="whose registered capabilities count when `capabilities` is not given"),
            Field("capabilities", "namelist", default=None, doc="capabilities to match (default: the agent's "
                  "registered ones; none when no agent is named)"),
        ),
        returns="task | null",
    ),
)

TASK_TOPICS: dict[str, str] = {
    "task.created": "a task was created (status waiting or available)",
    "task.available": "a waiting task's dependencies all completed",
    "task.claimed": "an agent claimed a task (claimed_by, token)",
    "task.completed": "the owner completed a task",
    "task.failed": "the owner failed a task; it is available again (or see task.dead)",
    "task.dead": "a task failed max_attempts times",
    "task.released": "a claim ended without completion: reason released, lease_expired, claim_expired, "
                     "unregistered or admin_released",
}
