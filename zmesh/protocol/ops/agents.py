"""The agent ops of the wire protocol: register, heartbeat, unregister; the agent events and
liveness. protocol.OPS takes them right after ``hello``.

Rules it keeps:

* What travels is stated once, here: the broker validates requests with these fields, the
  clients check arguments with them, the CLI builds its options from them and
  docs/PROTOCOL.md is generated from them.
* A lease is the agent's life: a heartbeat renews it and costs no disk write; when it lapses
  every claim the agent holds is released (``agent.expired``).
"""

from __future__ import annotations

from ..fields import MAX_INT, MAX_TTL_S, MIN_TTL_S, Field, Op
from ..states import Liveness

_AGENT = Field("agent", "id", True, doc="agent id")

AGENT_OPS: tuple[Op, ...] = (
    Op(
        "register",
        "Register (or re-register) an agent and start its lease. Re-registering a live "
        "agent keeps its lease id and claims and updates capabilities and metadata.",
        (
            _AGENT,
            Field("capabilities", "namelist", default=[], doc="capability names"),
            Field("groups", "namelist", default=None, doc="groups to be a member of (messages "
                  "to a group reach its live members); re-registering without it keeps them"),
            Field("metadata", "object", default={}, doc="free JSON object"),
            Field("ttl", "ttl", default=None, doc="lease TTL in seconds (default: broker's)", lo=MIN_TTL_S, hi=MAX_TTL_S),
        ),
        writes=True,
        returns="{agent, lease, ttl}",
    ),
    Op(
        "heartbeat",
        "Renew the agent's lease. Refused with lease_expired when the lease lapsed or "
        "(when `lease` is given) was replaced. Costs no disk write.",
        (_AGENT, Field("lease", "int", doc="lease id from register", lo=1, hi=MAX_INT)),
        returns="{agent, lease, ttl}",
        errors=("lease_expired",),
    ),
    Op(
        "unregister",
        "End the agent's lease now: every claim it holds is released at once.",
        (_AGENT,),
        writes=True,
        returns="{agent, released: [task ids]}",
        errors=("not_found",),
    ),
)

#: agents heartbeat every HEARTBEAT_EVERY of their lease TTL (the Python clients do)
HEARTBEAT_EVERY = 1 / 3
#: liveness: an agent silent for EVASIVE_AFTER of its TTL (one whole heartbeat period
#: missed) is `evasive`; silent for its whole TTL it is `gone` (the lease lapses)
EVASIVE_AFTER = 2 / 3
#: the liveness an agent's record shows (`gone` is only said by `agent.expired`: no record is left)
LIVENESS = (Liveness.ALIVE.value, Liveness.EVASIVE.value)

AGENT_TOPICS: dict[str, str] = {
    "agent.registered": "an agent registered (or re-registered); state and position in the idle queue",
    "agent.unregistered": "an agent unregistered, or an admin ended its lease (reason admin_released)",
    "agent.expired": "an agent's lease lapsed; its claims were released (liveness `gone`)",
    "agent.idle": "an agent is idle: it reported so, or its last task claim ended (position in the idle queue)",
    "agent.busy": "an agent is busy: it reported so (task), or it claimed a task",
    "agent.blocked": "an agent reported itself blocked (reason), or raised a blocker",
    "agent.completed": "an agent completed a task (reported, or through complete): tasks done + 1, idle again unless it holds another task",
    "agent.help": "an agent asked for help (reason, helpers found)",
    "agent.evasive": "an agent missed a heartbeat period (silent for EVASIVE_AFTER of its TTL); its claims stand",
    "agent.alive": "an evasive agent was heard from again",
}
