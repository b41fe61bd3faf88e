"""A live picture of the mesh, with no I/O: the agents, the idle queue, the open blockers and
the task counts, started from one ``snapshot`` and kept current by its events.

Rules it keeps:

* It starts from a snapshot taken at one seq and applies only events after it, each once
  (an event at or below ``seq`` is ignored), so nothing is lost and nothing counted twice.
* Presence events carry the agent's whole presence (absolute values, never deltas), so an
  agent's row is replaced, not adjusted; task events move one task between two counts.
* The idle queue follows the positions the events carry: an agent is put where its event
  says and taken out when it stops being idle or goes.
* Both clients (Client.watch, AsyncClient.watch) and ``zmesh top`` use it: one logic.
"""

from __future__ import annotations

from typing import Any

from ..protocol import STATUSES, Event
from ..protocol.records import Snapshot

#: presence fields an event body carries, copied onto the agent's row
_PRESENCE = ("state", "task", "last_task", "reason", "message", "cost", "completed", "failed",
             "since", "liveness")


class Roster:
    """Agents, idle queue, open blockers and task counts as of ``seq``."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.seq: int = snapshot["seq"]
        self.agents: dict[str, dict[str, Any]] = {a["id"]: dict(a) for a in snapshot["agents"]}
        self.idle_queue: list[str] = list(snapshot["idle_queue"])
        self.blockers: dict[str, dict[str, Any]] = {b["id"]: dict(b) for b in snapshot["blockers"]}
        self.tasks: dict[str, int] = dict(snapshot["tasks"])

    # ------------------------------------------------------------ applying events
    def apply(self, event: Event) -> bool:
        """Fold one event in; False when it was already counted (seq at or below ours)."""
        if event.seq <= self.seq:
            return False
        self.seq = event.seq
        topic, body = event.topic, event.body
        if topic.startswith("task."):
            old, new = body.get("old_status"), body.get("new_status")
            if old != new:
                if old in self.tasks:
                    self.tasks[old] -= 1
                if new in self.tasks:
                    self.tasks[new] += 1
        elif topic == "agent.registered":
            row = self.agents.setdefault(body["agent"], {"id": body["agent"], "completed": 0, "failed": 0,
                                                         "cost": 0.0, "task": None, "last_task": None,
                                                         "reason": None, "message": None,
                                                         "liveness": "alive", "claims": []})
            row.update({k: body[k] for k in ("lease", "ttl", "capabilities", "state", "since", "metadata",
                                             "registered") if k in body})
            self._place(body["agent"], body.get("position"))
        elif topic in ("agent.expired", "agent.unregistered"):
            self.agents.pop(body["agent"], None)
            self._place(body["agent"], None)
        elif topic in ("agent.evasive", "agent.alive"):
            seen = self.agents.get(body["agent"])
            if seen is not None:
                seen["liveness"] = body["liveness"]
        elif topic.startswith("agent."):
            seen = self.agents.get(body["agent"])
            if seen is not None:
                seen.update({k: body[k] for k in _PRESENCE if k in body})
                self._place(body["agent"], body.get("position"))
        elif topic == "blocker.raised":
            self.blockers[body["blocker"]] = {"id": body["blocker"], **{k: v for k, v in body.items()
                                                                       if k != "blocker"}}
        elif topic == "blocker.resolved":
            self.blockers.pop(body["blocker"], None)
        return True

    def _place(self, agent: str, position: int | None) -> None:
        if agent in self.idle_queue:
            self.idle_queue.remove(agent)
        if position is not None:
            self.idle_queue.insert(position - 1, agent)

    # ------------------------------------------------------------ reading
    def totals(self) -> dict[str, Any]:
        """Agents by state and liveness, idle count, open blockers, tasks by status."""
        states: dict[str, int] = {}
        evasive = 0
        for row in self.agents.values():
            states[row.get("state", "idle")] = states.get(row.get("state", "idle"), 0) + 1
            evasive += row.get("liveness") == "evasive"
        return {"agents": len(self.agents), "states": states, "idle": len(self.idle_queue),
                "evasive": evasive, "blockers": len(self.blockers),
                "tasks": {s: self.tasks.get(s, 0) for s in STATUSES}, "seq": self.seq}

    def position(self, agent: str) -> int | None:
        return self.idle_queue.index(agent) + 1 if agent in self.idle_queue else None
