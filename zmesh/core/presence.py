"""Presence: what each agent is doing, as it reports and as its claims say.

Rules it keeps:

* An agent's state is ``idle``, ``busy``, ``blocked`` or ``help``. Its report sets it;
  ``completed`` is a moment (tasks done + 1, once per task, then idle again). Holding a
  task claim makes an agent busy: claiming needs no extra call, and completing, failing or
  losing its last task claim (while its lease lives) makes it idle again. A claim by an
  idle agent writes no agent record: its state is derived from its claims
  (:meth:`Presence.state`), so the claim path stays one tree cheaper.
* ``idle`` and ``completed`` reports are refused while the agent holds a task claim: the
  queue must not offer an agent that is still holding work.
* Every change is one event ``agent.<state>`` (``agent.completed`` for a completion), with
  the agent's presence (:meth:`Presence.brief`) in its body, published at once.
* A new idle spell takes the next ``idle_order``, so the idle queue is in arrival order and
  an agent reporting idle again keeps its place.
* Helpers are idle, alive agents covering at least ``threshold`` of the required
  capabilities, best cover first, then longest waiting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..errors import BadRequest, Conflict, NotFound
from ..protocol.fields import STATES
from ..protocol.states import AgentState, Report
from .agents import Agents
from .claims import Claims
from .context import Batch
from .eventlog import EventLog, bump, counter

if TYPE_CHECKING:
    from ..store.base import Txn

Handler = Callable[[Batch, dict[str, Any]], Any]

# the states bound once: the claim path asks state() and claimed() (protocol/states.py)
IDLE, BUSY, BLOCKED, HELP = AgentState.IDLE, AgentState.BUSY, AgentState.BLOCKED, AgentState.HELP
#: states a claim ends (claiming makes an agent busy; an idle one is busy by its claim alone)
_ENDED_BY_CLAIM = (BLOCKED, HELP)
#: reports refused while the agent holds a task claim
_NOT_WHILE_HOLDING = (Report.IDLE, Report.COMPLETED)

#: fields a report needs, by state
_NEEDS = {Report.BUSY: "task", Report.COMPLETED: "task", Report.BLOCKED: "reason", Report.HELP: "reason"}


class Presence:
    """Agent states, reports, helpers and the views of agents."""

    def __init__(self, log: EventLog, agents: Agents, claims: Claims) -> None:
        self.log = log
        self.agents = agents
        self.claims = claims

    def handlers(self) -> dict[str, Handler]:
        return {"report": self.report, "helpers": self.helpers_op, "agent_get": self.agent_get,
                "agent_list": self.agent_list}

    # ------------------------------------------------------------ state
    def state(self, record: dict[str, Any]) -> str:
        """The state shown: the stored one, except that a task claim makes an idle agent
        busy."""
        stored = record["state"]
        if stored == IDLE and self.claims.is_busy(record["id"]):
            return BUSY
        return stored

    def _task(self, txn: Txn, record: dict[str, Any]) -> str | None:
        """The task the agent works on: its latest task claim, else what it reported."""
        key = self.claims.current_busy(record["id"])
        if key is not None:
            return self.claims.kind(key).show(key)
        return record["task"] if record["state"] != IDLE else None

    def brief(self, txn: Txn, record: dict[str, Any]) -> dict[str, Any]:
        """What an event says of the agent's presence."""
        agent = record["id"]
        state = self.state(record)
        return {"agent": agent, "state": state, "task": self._task(txn, record),
                "last_task": record["last_task"], "reason": record["reason"],
                # an idle spell's note ("waiting for work") is not shown once a claim makes the
                # agent busy: the claim writes no agent record, so the view drops it
                "message": record["message"] if state == record["state"] else None, "cost": record["cost"],
                "completed": record["completed"], "failed": record["failed"],
                "since": record["since"], "position": self.agents.idle.position(agent),
                "liveness": self.agents.liveness(agent)}

    def _emit(self, b: Batch, topic: str, record: dict[str, Any], **extra: Any) -> int:
        event = self.log.emit(b, topic, self.brief(b.txn, record) | extra)
        return event.seq

    def _become_idle(self, b: Batch, record: dict[str, Any]) -> None:
        """A new idle spell: the back of the queue (the record is written by the caller)."""
        record.update(state=IDLE, since=b.now.wall, task=None, reason=None,
                      idle_order=bump(b, b"idle"))

    # ------------------------------------------------------------ hooks (tasks)
    def claimed(self, b: Batch, record: dict[str, Any], task_id: str, first: bool) -> None:
        """``record``'s agent claimed ``task_id``; ``first``: it held no task claim before."""
        if record["state"] in _ENDED_BY_CLAIM:  # claiming makes an agent busy
            record.update(state=BUSY, task=task_id, reason=None, since=b.now.wall)
            self.agents.put(b, record)
        elif not first:
            return  # busy already, with another task: nothing changed in what it shows
        self.agents.idle.remove(record["id"])
        self._emit(b, "agent.busy", record)

    def finished(self, b: Batch, record: dict[str, Any], task_id: str, completed: bool) -> bool:
        """A task claim of ``record``'s agent ended while its lease lives (completed,
        failed, released or lapsed). Updates the record; True when it must be written."""
        record["last_task"] = task_id
        if completed:
            record["last_completed"] = task_id
        if self.agents.busy(record["id"]):  # still holds another task
            if completed:
                self._emit(b, "agent.completed", record)
            return True
        self._become_idle(b, record)
        self.agents.queue(record)
        self._emit(b, "agent.completed" if completed else "agent.idle", record)
        return True

    # ------------------------------------------------------------ ops
    def report(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        agent, state = body["agent"], body["state"]
        needed = _NEEDS.get(state)
        if needed and body[needed] is None:
            raise BadRequest(f"a '{state}' report needs field '{needed}'", {"field": needed})
        if state in _NOT_WHILE_HOLDING:
            held = self.claims.busy_keys(agent)
            if held:
                shown = ", ".join(self.claims.kind(k).show(k) for k in held)
                raise Conflict(f"agent '{agent}' holds task {shown}: complete, fail or release it "
                               f"before reporting {state}", {"agent": agent, "held": shown})
        record = self.agents.ensure(b, agent, None)
        if body["message"] is not None:
            record["message"] = body["message"]
        if body["cost"] is not None:
            record["cost"] = body["cost"]
        if body["task"] is not None:
            record["last_task"] = body["task"]
        helpers: list[dict[str, Any]] | None = None
        extra: dict[str, Any] = {}
        if state == Report.IDLE:
            if record["state"] != IDLE:
                self._become_idle(b, record)
        elif state == Report.COMPLETED:
            if body["task"] != record["last_completed"]:  # once per task
                record["completed"] += 1
                record["last_completed"] = body["task"]
            self._become_idle(b, record)
        else:
            if record["state"] != state or record["task"] != body["task"]:
                record["since"] = b.now.wall
            record.update(state=state, task=body["task"], reason=body["reason"])
            if state == Report.HELP:
                helpers = self.find(b.txn, body["requires"], body["threshold"], exclude=agent)
                extra = {"requires": body["requires"], "helpers": helpers}
        self.agents.put(b, record)
        self.agents.queue(record)
        seq = self._emit(b, "agent." + state, record, **extra)
        return {"agent": agent, "state": self.state(record), "position": self.agents.idle.position(agent),
                "helpers": helpers, "seq": seq}

    def find(self, txn: Txn, requires: list[str], threshold: float, exclude: str | None = None,
             limit: int | None = None) -> list[dict[str, Any]]:
        """Idle, alive agents covering at least ``threshold`` of ``requires``: best cover
        first, then longest waiting."""
        wanted = set(requires)
        found = []
        for position, agent in enumerate(self.agents.idle.agents(), 1):
            if agent == exclude or agent in self.agents.evasive:
                continue
            record = self.agents.get(txn, agent)
            if record is None:  # cannot happen: the queue mirrors the table
                continue
            caps = set(record["capabilities"])
            matched = sorted(wanted & caps)
            cover = len(matched) / len(wanted) if wanted else 1.0
            if cover >= threshold and (cover > 0 or not wanted or threshold == 0):
                found.append({"agent": agent, "cover": round(cover, 3), "matched": matched,
                              "missing": sorted(wanted - caps), "position": position,
                              "waiting_since": record["since"], "capabilities": record["capabilities"]})
        found.sort(key=lambda h: -h["cover"])  # stable: longest waiting first within a cover
        return found[:limit] if limit else found

    def helpers_op(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        return {"helpers": self.find(b.txn, body["requires"], body["threshold"], limit=body["limit"]),
                "seq": counter(b, b"seq")}

    def view(self, b: Batch, record: dict[str, Any]) -> dict[str, Any]:
        """An agent as clients see it: the record, its presence, liveness, lease and claims."""
        agent = record["id"]
        view = dict(record)
        for private in ("idle_order", "last_completed"):
            view.pop(private, None)
        remaining = self.agents.lease_remaining(agent, b.now)
        state = self.state(record)
        view.update(self.brief(b.txn, record), id=agent, expires_in=None if remaining is None else round(remaining, 3),
                    waiting_since=record["since"] if state == IDLE else None,
                    uptime=round(max(0.0, b.now.wall - record["registered"]), 3),
                    claims=self.claims.shown(agent))
        del view["agent"]
        return view

    def agent_get(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        record = self.agents.get(b.txn, body["agent"])
        if record is None:
            raise NotFound(f"no agent '{body['agent']}'", {"agent": body["agent"]})
        return self.view(b, record)

    def agent_list(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        agents = [self.view(b, record) for record in self.agents.records(b.txn)]
        return {"agents": agents, "idle_queue": self.agents.idle.agents(), "seq": counter(b, b"seq")}

    def summary(self, txn: Txn) -> dict[str, Any]:
        """Agents by state and liveness, and the idle queue (for status)."""
        states = dict.fromkeys(STATES, 0)
        for record in self.agents.records(txn):
            states[self.state(record)] += 1
        return {"states": states, "evasive": len(self.agents.evasive),
                "idle_queue": self.agents.idle.agents()}
