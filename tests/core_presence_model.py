"""Presence, liveness, helpers and blockers in the model of the state-machine test: the
helpers that predict them and the rules and invariant that check them. A mixin of
CoreMachine (test_core_properties.py), which owns the tasks, agents, clock and requests."""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis.stateful import invariant, rule

from zmesh import protocol
from zmesh.errors import BadRequest, Conflict, NotFound
from zmesh.protocol import Event

from .core_model import MAgent, agents, known, requires, task_index


class PresenceModel:
    """Needs from the machine: agents, tasks, mono, evasive_dl, idle_counter, blockers,
    run, query, inspect, ensure, tid."""

    agents: dict[str, MAgent]
    tasks: dict[str, Any]
    mono: float
    evasive_dl: dict[str, float]
    idle_counter: int
    blockers: dict[str, list[Any]]

    def heard(self, agent: str) -> list[str]:
        """The agent was heard from: evasive again only after EVASIVE_AFTER of its TTL."""
        a = self.agents[agent]
        self.evasive_dl[agent] = self.mono + a.ttl * protocol.EVASIVE_AFTER
        if a.evasive:
            a.evasive = False
            return ["agent.alive"]
        return []

    def new_idle(self, a: MAgent) -> None:
        """A new idle spell: the back of the idle queue."""
        self.idle_counter += 1
        a.state, a.idle_order = "idle", self.idle_counter

    def held(self, agent: str) -> list[str]:
        return sorted(t.id for t in self.tasks.values() if t.status == "claimed" and t.owner == agent)

    def shown_state(self, agent: str) -> str:
        a = self.agents[agent]
        return "busy" if a.state == "idle" and self.held(agent) else a.state

    def idle_queue(self) -> list[str]:
        idle = [(a.idle_order, name) for name, a in self.agents.items()
                if a.state == "idle" and not self.held(name)]
        return [name for _, name in sorted(idle)]

    def position(self, agent: str) -> int | None:
        queue = self.idle_queue()
        return queue.index(agent) + 1 if agent in queue else None

    def model_helpers(self, requires: list[str], threshold: float, exclude: str | None = None
                      ) -> list[tuple[str, float]]:
        found = []
        for name in self.idle_queue():
            a = self.agents[name]
            if name == exclude or a.evasive:
                continue
            cover = len(set(requires) & set(a.caps)) / len(requires) if requires else 1.0
            if cover >= threshold and (cover > 0 or not requires or threshold == 0):
                found.append((name, round(cover, 3)))
        return sorted(found, key=lambda h: -h[1])


    def claim_ended(self, agent: str, tid: str, completed: bool) -> list[str]:
        """A task claim ended while the agent's lease lives: idle again after its last."""
        a = self.agents[agent]
        if completed:
            a.last_completed = tid
        if self.held(agent):
            return ["agent.completed"] if completed else []
        self.new_idle(a)
        return ["agent.completed" if completed else "agent.idle"]

    @staticmethod
    def check_topics(events: list[Event], expected: list[str]) -> None:
        got = sorted(e.topic for e in events)
        assert got == sorted(expected), (got, sorted(expected))

    # ================================================================ presence rules
    @rule(agent=agents, state=st.sampled_from(protocol.REPORTS), i=task_index,
          with_task=st.booleans(), with_reason=st.booleans())
    def report(self, agent: str, state: str, i: int, with_task: bool, with_reason: bool) -> None:
        task, reason = (f"t{i}" if with_task else None), ("stuck" if with_reason else None)
        body = {"agent": agent, "state": state, "task": task, "reason": reason}
        needed = {"busy": task, "completed": task, "blocked": reason, "help": reason}
        if state in needed and needed[state] is None:
            self.run(BadRequest, "report", **body)
            return
        if state in ("idle", "completed") and agent in self.agents and self.held(agent):
            self.run(Conflict, "report", **body)
            return
        reply, events = self.run(None, "report", **body)
        topics = self.ensure(agent, None) + ["agent." + state]
        a = self.agents[agent]
        if state == "idle":
            if a.state != "idle":
                self.new_idle(a)
        elif state == "completed":
            if task != a.last_completed:  # counted once per task
                a.completed += 1
                a.last_completed = task
            self.new_idle(a)
        else:
            a.state = state
        self.check_topics(events, topics)
        assert (reply["state"], reply["position"]) == (self.shown_state(agent), self.position(agent))
        if state == "help":
            assert [(h["agent"], h["cover"]) for h in reply["helpers"]] == self.model_helpers([], 0.5, agent)
        else:
            assert reply["helpers"] is None

    @rule(req=requires, threshold=st.sampled_from([0.0, 0.5, 1.0]))
    def helpers(self, req: list[str], threshold: float) -> None:
        got = self.query("helpers", requires=req, threshold=threshold)["helpers"]
        assert [(h["agent"], h["cover"]) for h in got] == self.model_helpers(req, threshold)

    @rule(agent=agents, i=task_index, known_=known, with_task=st.booleans())
    def raise_blocker(self, agent: str, i: int, known_: bool, with_task: bool) -> None:
        tid = self.tid(i, known_) if with_task else None
        body = {"agent": agent, "type": "review", "description": "stuck", "task": tid}
        if tid is not None and tid not in self.tasks:
            self.run(NotFound, "blocker_raise", **body)
            return
        reply, events = self.run(None, "blocker_raise", **body)
        topics = self.ensure(agent, None) + ["blocker.raised", "agent.blocked"]
        bid = f"blk-{len(self.blockers) + 1}"
        assert reply["blocker"]["id"] == bid and reply["blocker"]["status"] == "open"
        self.blockers[bid] = [agent, True]
        a = self.agents[agent]
        a.state, a.blocker = "blocked", bid
        self.check_topics(events, topics)

    @rule(n=st.integers(1, 6), resolver=st.none() | agents)
    def resolve_blocker(self, n: int, resolver: str | None) -> None:
        bid = f"blk-{n}"
        blocker = self.blockers.get(bid)
        expect = NotFound if blocker is None else None if blocker[1] else Conflict
        out = self.run(expect, "blocker_resolve", blocker=bid, agent=resolver)
        if expect is not None:
            return
        assert blocker is not None
        blocker[1] = False
        topics = ["blocker.resolved"] + (self.ensure(resolver, None) if resolver else [])
        a = self.agents.get(blocker[0])
        if a is not None and a.blocker == bid:
            a.blocker = None
            if a.state == "blocked":
                if self.held(blocker[0]):
                    a.state = "busy"
                else:
                    self.new_idle(a)
                topics.append("agent." + self.shown_state(blocker[0]))
        self.check_topics(out[1], topics)
        assert out[0]["status"] == "resolved" and out[0]["resolved_by"] == resolver

    @invariant()
    def presence_matches_model(self) -> None:
        listing = self.query("agent_list")
        assert listing["idle_queue"] == self.idle_queue()
        status = self.query("status")
        census = dict.fromkeys(protocol.STATES, 0)
        for name in self.agents:
            census[self.shown_state(name)] += 1
        assert status["states"] == census and status["idle_queue"] == self.idle_queue()
        assert status["evasive"] == sum(m.evasive for m in self.agents.values())
        assert status["blockers"] == sum(1 for b in self.blockers.values() if b[1])
        state = self.inspect()
        assert state.evasive_at == self.evasive_dl
        assert state.evasive == sorted(a for a, m in self.agents.items() if m.evasive)
