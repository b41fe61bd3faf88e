"""Blockers: "gang up on the blocker".

Blocker states (protocol.BlockerStatus) and the only transition (the table is
:data:`TRANSITIONS`; the change goes through :meth:`Blockers.transition`)::

    (raised) ──> open ──resolve──> resolved        (final: resolving again is a conflict)

Rules it keeps:

* A blocker is raised by an agent (which becomes ``blocked`` by it) or by the broker itself
  when a waiting task can never become available (a task it depends on went ``dead``), so
  no task waits silently forever. Raising publishes ``blocker.raised`` at once with the
  helpers found for its required capabilities.
* A blocker is open until resolved, once: ``blocker.resolved``. The agent it blocked is
  then no longer blocked by it: busy again if it holds a task, else idle.
* Ids are ``blk-<n>`` from one counter, so listing in key order is oldest first; open
  blockers also have an index entry, so listing them never walks resolved ones.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import Conflict, NotFound
from ..protocol.states import AgentState, BlockerStatus, Severity
from .agents import Agents
from .context import Batch
from .eventlog import EventLog, bump, counter
from .presence import Presence
from .schema import blocker_id, blocker_key, blocker_number, dumps, loads

Handler = Callable[[Batch, dict[str, Any]], Any]

#: who raised a blocker the broker found itself
BROKER = "zmesh"

TRANSITIONS: dict[tuple[str, str], tuple[str, ...]] = {
    (BlockerStatus.OPEN, "resolve"): (BlockerStatus.RESOLVED,),
}


class Blockers:
    """The blockers table and ops."""

    def __init__(self, log: EventLog, agents: Agents, presence: Presence) -> None:
        self.log = log
        self.agents = agents
        self.presence = presence

    def handlers(self) -> dict[str, Handler]:
        return {"blocker_raise": self.raise_op, "blocker_resolve": self.resolve,
                "blocker_list": self.list_op}

    @staticmethod
    def transition(record: dict[str, Any], action: str, new: str) -> str:
        """Move a blocker to ``new`` by ``action``; returns its old status."""
        old = record["status"]
        if new not in TRANSITIONS.get((old, action), ()):  # a bug: resolve checks the status first
            raise AssertionError(f"illegal blocker transition {old} -{action}-> {new}")
        record["status"] = new
        return old

    def count_open(self, txn: Any) -> int:
        return sum(1 for _ in txn.scan("open_blockers"))

    def _get(self, txn: Any, blocker: str) -> tuple[int, dict[str, Any]]:
        number = blocker_number(blocker)
        raw = None if number is None else txn.get("blockers", blocker_key(number))
        if number is None or raw is None:
            raise NotFound(f"no blocker '{blocker}'", {"blocker": blocker})
        return number, loads(raw)

    def _raise(self, b: Batch, raised_by: str, body: dict[str, Any], helpers: list[dict[str, Any]]
               ) -> dict[str, Any]:
        number = bump(b, b"blocker")
        record = {"id": blocker_id(number), "agent": raised_by, "type": body["type"],
                  "description": body["description"], "severity": body["severity"],
                  "requires": body["requires"], "task": body["task"], "status": BlockerStatus.OPEN,
                  "raised": b.now.wall, "resolved": None, "resolved_by": None, "resolution": None}
        b.txn.put("blockers", blocker_key(number), dumps(record))
        b.txn.put("open_blockers", blocker_key(number), b"")
        self.log.emit(b, "blocker.raised", {"blocker": record["id"], **{k: record[k] for k in (
            "agent", "type", "description", "severity", "requires", "task")}, "helpers": helpers})
        return record

    def raise_op(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        agent = body["agent"]
        if body["task"] is not None and b.txn.get("tasks", body["task"].encode()) is None:
            raise NotFound(f"no task '{body['task']}'", {"task": body["task"]})
        record = self.agents.ensure(b, agent, None)
        helpers = self.presence.find(b.txn, body["requires"], body["threshold"], exclude=agent)
        blocker = self._raise(b, agent, body, helpers)
        if record["state"] != AgentState.BLOCKED or record["blocker"] != blocker["id"]:
            record["since"] = b.now.wall
        record.update(state=AgentState.BLOCKED, reason=body["description"], blocker=blocker["id"])
        if body["task"] is not None:
            record.update(task=body["task"], last_task=body["task"])
        self.agents.put(b, record)
        self.agents.queue(record)
        seq = self.log.emit(b, "agent.blocked", self.presence.brief(b.txn, record) | {
            "blocker": blocker["id"]}).seq
        return {"blocker": blocker, "helpers": helpers, "seq": seq}

    def dependency_dead(self, b: Batch, waiting: dict[str, Any], dead: dict[str, Any]) -> None:
        """``waiting`` depends on ``dead``: raise the blocker that says so."""
        body = {"type": "dependency_dead", "severity": Severity.HIGH, "requires": waiting["requires"],
                "task": waiting["id"],
                "description": f"task '{waiting['id']}' waits on '{dead['id']}', which is dead "
                               f"after {dead['attempts']} failed attempts: it can never become "
                               "available unless that work is done another way"}
        self._raise(b, BROKER, body, self.presence.find(b.txn, waiting["requires"], 0.5))

    def resolve(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        number, record = self._get(b.txn, body["blocker"])
        if record["status"] != BlockerStatus.OPEN:
            raise Conflict(f"blocker '{record['id']}' was resolved already by "
                           f"'{record['resolved_by']}'", {"blocker": record["id"],
                                                          "resolved_by": record["resolved_by"]})
        resolver = body["agent"]
        if resolver is not None:
            self.agents.ensure(b, resolver, None)
        self.transition(record, "resolve", BlockerStatus.RESOLVED)
        record.update(resolved=b.now.wall, resolved_by=resolver, resolution=body["resolution"])
        b.txn.put("blockers", blocker_key(number), dumps(record))
        b.txn.delete("open_blockers", blocker_key(number))
        self.log.emit(b, "blocker.resolved", {"blocker": record["id"], "agent": record["agent"],
                                              "resolved_by": resolver, "resolution": body["resolution"],
                                              "task": record["task"]})
        blocked = self.agents.get(b.txn, record["agent"])
        if blocked is not None and blocked["blocker"] == record["id"]:
            blocked["blocker"] = None
            if blocked["state"] == AgentState.BLOCKED:
                if self.agents.busy(blocked["id"]):
                    blocked.update(state=AgentState.BUSY, reason=None, since=b.now.wall)
                else:
                    blocked.update(state=AgentState.IDLE, reason=None, task=None, since=b.now.wall,
                                   idle_order=bump(b, b"idle"))
                self.agents.put(b, blocked)
                self.agents.queue(blocked)
                self.log.emit(b, "agent." + self.presence.state(blocked),
                              self.presence.brief(b.txn, blocked) | {"blocker": record["id"]})
            else:
                self.agents.put(b, blocked)
        return record

    def list_op(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        status, limit, after = body["status"], body["limit"], body["after"]
        start = b""
        if after:
            number = blocker_number(after)
            if number is None:
                raise NotFound(f"no blocker '{after}' to page after", {"blocker": after})
            start = blocker_key(number + 1)
        table = "open_blockers" if status == BlockerStatus.OPEN else "blockers"
        blockers: list[dict[str, Any]] = []
        more = False
        for key, raw in b.txn.scan(table, start=start):
            record = loads(raw if table == "blockers" else b.txn.get("blockers", bytes(key)) or b"{}")
            if status == BlockerStatus.RESOLVED and record["status"] != BlockerStatus.RESOLVED:
                continue
            if len(blockers) == limit:
                more = True
                break
            blockers.append(record)
        return {"blockers": blockers, "more": more, "seq": counter(b, b"seq")}

