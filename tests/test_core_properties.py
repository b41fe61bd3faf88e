"""Stateful property test of the state machine (zmesh/core/) against a small model.

Hypothesis drives random sequences of requests over six tasks and four agents, moves a
clock, expires, and restarts (a new Core on the same store + recover). The model is
written from the rules in the zmesh/core/ module docstrings and the op docs in protocol.py: it predicts
the outcome of every request (reply or which refusal), who holds what, and every lease and
claim deadline; after every step the invariants compare the core's views with it.

Refusals are run the way the broker runs them: caught inside the write transaction, which
then commits, so a handler that wrote before refusing would be caught (and the whole
store, the views and the volatile deadlines are compared before and after).
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from zmesh import protocol
from zmesh.core import HISTORY_LIMIT, Core, CoreState, Now, Settings
from zmesh.errors import (
    ClaimExpired,
    Conflict,
    LeaseExpired,
    NotFound,
    NotOwner,
    RemoteError,
    SnapshotRequired,
    StaleToken,
)
from zmesh.protocol import Event
from zmesh.store import MemoryStore

from .core_model import (  # noqa: F401
    AGENTS,
    DEFAULT_TTL,
    MAX_TTL,
    N_TASKS,
    TTLS,
    WALL0,
    MAgent,
    MTask,
    agents,
    caps,
    deps,
    known,
    requires,
    task_index,
    token_mode,
    who,
)
from .core_presence_model import PresenceModel


class CoreMachine(PresenceModel, RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryStore()
        self.settings = Settings(default_ttl=DEFAULT_TTL, event_log_size=100_000)
        self.core = Core(self.settings)
        self.mono = 50.0
        self.events: list[dict[str, Any]] = []
        self.max_granted = 0  # largest token / lease id handed out so far
        self.live_leases: dict[str, int] = {}  # from events only
        self.tasks: dict[str, MTask] = {}
        self.agents: dict[str, MAgent] = {}
        self.lease_dl: dict[str, float] = {}
        self.claim_dl: dict[str, float] = {}
        self.claim_ttl: dict[str, float | None] = {}  # the ttl stored in the claim record
        self.orders = 0
        self.evasive_dl: dict[str, float] = {}  # when each agent turns evasive unless heard from
        self.idle_counter = 0
        self.blockers: dict[str, list[Any]] = {}  # id -> [raised by, open]

    @initialize(log_size=st.sampled_from([4, 25, 100_000]), data=st.data())
    def start(self, log_size: int, data: st.DataObject) -> None:
        self.settings.event_log_size = log_size
        for i in range(data.draw(st.integers(0, N_TASKS), label="seeded tasks")):
            self.create(i, data.draw(st.integers(-2, 2)), data.draw(requires),
                        data.draw(st.integers(1, 3)), data.draw(deps))

    # ================================================================ plumbing
    def now(self) -> Now:
        return Now(self.mono, WALL0 + self.mono)

    def views(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        with self.store.read() as txn:
            ctx = self.core.batch(txn, self.now())
            tasks = self.core.handle(ctx, "task_list", protocol.validate(
                protocol.OPS["task_list"], {"limit": 10_000}))[0]["tasks"]
            agents = self.core.handle(ctx, "agent_list", {})[0]["agents"]
        return tasks, agents

    def query(self, op: str, **body: Any) -> Any:
        with self.store.read() as txn:
            return self.core.handle(self.core.batch(txn, self.now()), op,
                                    protocol.validate(protocol.OPS[op], body))[0]

    def everything(self) -> tuple[Any, ...]:
        return ({name: dict(t) for name, t in self.store.tables.items()}, self.views(),
                self.inspect())

    def inspect(self) -> CoreState:
        with self.store.read() as txn:
            return self.core.inspect(txn)

    def run(self, expect: type[RemoteError] | None, op: str, **body: Any) -> Any:
        """One request in its own write transaction; the outcome must be the model's."""
        validated = protocol.validate(protocol.OPS[op], body)
        before = self.everything()
        error: RemoteError | None = None
        with self.store.write() as txn:
            try:
                reply, events = self.core.handle(self.core.batch(txn, self.now()), op, validated)
            except RemoteError as exc:
                error = exc
                assert not txn.dirty, f"refused {op} {body} wrote before refusing"
        if error is not None:
            assert expect is not None and type(error) is expect, \
                f"{op} {body}: got {error!r}, model expected {expect}"
            assert self.everything() == before, f"refused {op} {body} changed the state"
            return error
        assert expect is None, f"{op} {body} succeeded, model expected {expect.__name__}"
        self.record(events)
        return reply, events

    def record(self, events: list[Event]) -> None:
        for ev in events:
            assert ev.seq == len(self.events) + 1, f"seq {ev.seq} after {len(self.events)}"
            self.events.append(ev.to_json())
            if ev.topic == "task.claimed":
                assert ev.body["token"] > self.max_granted, "token not above every earlier one"
                self.max_granted = ev.body["token"]
            elif ev.topic == "agent.registered":
                agent, lease = ev.body["agent"], ev.body["lease"]
                if agent in self.live_leases:  # re-register keeps the lease id
                    assert lease == self.live_leases[agent]
                else:
                    assert lease > self.max_granted, "lease id not above every earlier token"
                    self.max_granted = lease
                    self.live_leases[agent] = lease
            elif ev.topic in ("agent.expired", "agent.unregistered"):
                del self.live_leases[ev.body["agent"]]

    def expire(self) -> list[Event]:
        with self.store.write() as txn:
            events = self.core.expire(self.core.batch(txn, self.now()))
        self.record(events)
        return events

    # ================================================================ model helpers
    def touch(self, agent: str, at_least: float | None = None) -> list[str]:
        """Any request from an agent renews its lease (core docstring). Returns the
        liveness events it causes."""
        ttl = max(self.agents[agent].ttl, at_least or 0.0)
        if self.mono + ttl > self.lease_dl.get(agent, 0.0):
            self.lease_dl[agent] = self.mono + ttl
        return self.heard(agent)

    def ensure(self, agent: str, ttl: float | None) -> list[str]:
        """The agent acts: an unknown agent gets an implicit lease. Returns the events."""
        if agent in self.agents:
            return self.touch(agent, ttl)
        self.agents[agent] = a = MAgent(caps=[], ttl=ttl or DEFAULT_TTL, implicit=True)
        self.new_idle(a)
        self.lease_dl[agent] = self.mono + (ttl or DEFAULT_TTL)
        self.heard(agent)
        self.set_lease_from_events(agent)  # called after the request: its events are recorded
        return ["agent.registered"]

    def grant(self, t: MTask, agent: str, ttl: float | None, token: int) -> list[str]:
        """Returns the presence events: claiming makes an agent busy."""
        assert t.status == "available"
        first = not self.held(agent)
        t.status, t.owner, t.token = "claimed", agent, token
        t.tokens.append(token)
        self.claim_ttl[t.id] = ttl
        if ttl:
            self.claim_dl[t.id] = self.mono + ttl
        a = self.agents[agent]
        a.claims += 1
        if a.state in ("blocked", "help"):
            a.state = "busy"
            return ["agent.busy"]
        return ["agent.busy"] if first else []

    def end_claim(self, t: MTask, new_status: str, reason: str | None = None) -> None:
        """``reason``: how the claim ended, as the task's history records it (None: completed)."""
        if reason is not None:
            assert t.owner is not None and t.token is not None
            t.ended = (t.ended + [(t.token, t.owner, reason)])[-HISTORY_LIMIT:]
        t.status, t.owner, t.token = new_status, None, None
        self.claim_dl.pop(t.id, None)
        self.claim_ttl.pop(t.id, None)

    def held_error(self, t: MTask | None, agent: str, token: int | None) -> type[RemoteError] | None:
        """The refusal complete/fail/release/renew get (core docstring: owner + current token)."""
        if t is None:
            return NotFound
        if t.status == "claimed" and t.owner == agent and token in (None, t.token):
            return None
        if t.status == "claimed" and token == t.token:  # the right token in the wrong hands
            return NotOwner
        # a refusal says how the claim ended (issue 13): the claim with this token, or without
        # a token the agent's latest one; its own lapse -> lease_expired / claim_expired
        endings = list(t.ended)
        if t.completed_token is not None:
            assert t.completed_by is not None
            endings.append((t.completed_token, t.completed_by, "completed"))
        if token is not None:
            ending = next((e for e in endings if e[0] == token), None)
        else:
            ending = max((e for e in endings if e[1] == agent), default=None)
        lapsed = {"lease_expired": LeaseExpired, "unregistered": LeaseExpired, "claim_expired": ClaimExpired}
        if ending is not None and ending[1] == agent and ending[2] in lapsed:
            return lapsed[ending[2]]
        return StaleToken if token is not None else NotOwner

    def tid(self, i: int, known_: bool) -> str:
        if known_ and self.tasks:
            return sorted(self.tasks)[i % len(self.tasks)]
        return f"t{i}"

    def pick(self, i: int, known_: bool, who_: str, mode: str) -> tuple[str, MTask | None, str, int | None]:
        """Task, agent and token of a complete/fail/release/renew; "owner" prefers a held task."""
        held = sorted(t.id for t in self.tasks.values() if t.status == "claimed")
        tid = held[i % len(held)] if who_ == "owner" and known_ and held else self.tid(i, known_)
        t = self.tasks.get(tid)
        agent = t.owner if who_ == "owner" and t is not None and t.owner else (
            "a0" if who_ == "owner" else who_)
        if mode == "none":
            token = None
        elif mode == "future":
            token = self.max_granted + 7
        elif t is None or not t.tokens:
            token = max(1, self.max_granted)
        elif mode == "current":
            token = t.tokens[-1]
        else:  # stale: an earlier token of this task, or one of another task
            token = t.tokens[-2] if len(t.tokens) > 1 else max(1, t.tokens[-1] - 1)
        return tid, t, agent, token

    def set_lease_from_events(self, agent: str) -> None:
        if agent in self.agents:
            self.agents[agent].lease = self.live_leases[agent]

    def wake(self, done: str) -> set[str]:
        woken = set()
        for t in self.tasks.values():
            if t.status == "waiting" and done in t.depends_on and all(
                    self.tasks[d].status == "completed" for d in t.depends_on):
                t.status = "available"
                woken.add(t.id)
        return woken

    # ================================================================ rules
    @rule(i=task_index, priority=st.integers(-2, 2), requires=requires, max_attempts=st.integers(1, 3), deps=deps)
    def create(self, i: int, priority: int, requires: list[str], max_attempts: int, deps: list[int]) -> None:
        tid = f"t{i}"
        depends_on = [f"t{d}" for d in deps if d < i]
        if tid in self.tasks:
            expect: type[RemoteError] | None = Conflict
        elif any(d not in self.tasks for d in depends_on):
            expect = NotFound
        else:
            expect = None
        out = self.run(expect, "task_create", id=tid, priority=priority, requires=requires,
                       max_attempts=max_attempts, depends_on=depends_on)
        if expect is not None:
            return
        self.orders += 1
        waiting = any(self.tasks[d].status != "completed" for d in depends_on)
        self.tasks[tid] = MTask(tid, priority, requires, max_attempts, depends_on, self.orders,
                                "waiting" if waiting else "available")
        assert out[0]["status"] == self.tasks[tid].status

    @rule(i=task_index, known_=known, agent=agents, ttl=TTLS)
    def claim(self, i: int, known_: bool, agent: str, ttl: float | None) -> None:
        tid = self.tid(i, known_)
        t = self.tasks.get(tid)
        if t is None:
            self.run(NotFound, "claim", task=tid, agent=agent, ttl=ttl)
        elif t.status == "claimed" and t.owner != agent:
            err = self.run(Conflict, "claim", task=tid, agent=agent, ttl=ttl)
            assert err.details == {"task": tid, "status": "claimed", "holder": t.owner}
        elif t.status == "claimed":  # the holder again: the same claim
            reply, events = self.run(None, "claim", task=tid, agent=agent, ttl=ttl)
            assert reply["token"] == t.token
            self.check_topics(events, self.touch(agent, ttl))
            if ttl:
                self.claim_dl[tid] = self.mono + ttl
        elif t.status != "available":
            err = self.run(Conflict, "claim", task=tid, agent=agent, ttl=ttl)
            assert err.details == {"task": tid, "status": t.status}
        else:
            reply, events = self.run(None, "claim", task=tid, agent=agent, ttl=ttl)
            topics = self.ensure(agent, ttl)
            self.set_lease_from_events(agent)
            assert reply["task"] == tid and reply["agent"] == agent
            assert reply["lease"] == self.agents[agent].lease
            topics += ["task.claimed", *self.grant(t, agent, ttl, reply["token"])]
            self.check_topics(events, topics)

    @rule(agent=agents, use_caps=st.none() | caps, ttl=TTLS)
    def claim_next(self, agent: str, use_caps: list[str] | None, ttl: float | None) -> None:
        reply, events = self.run(None, "claim_next", agent=agent, capabilities=use_caps, ttl=ttl)
        topics = self.ensure(agent, ttl)
        self.set_lease_from_events(agent)
        have = set(use_caps if use_caps is not None else self.agents[agent].caps)
        fits = [t for t in self.tasks.values() if t.status == "available" and set(t.requires) <= have]
        if not fits:
            assert reply is None
            self.check_topics(events, topics)
            return
        best = min(fits, key=lambda t: (-t.priority, t.order))
        assert reply is not None and reply["task"] == best.id, (reply, best)
        topics += ["task.claimed", *self.grant(best, agent, ttl, reply["token"])]
        self.check_topics(events, topics)

    @rule(i=task_index, known_=known, who_=who, mode=token_mode, result=st.integers(0, 9))
    def complete(self, i: int, known_: bool, who_: str, mode: str, result: int) -> None:
        tid, t, agent, token = self.pick(i, known_, who_, mode)
        if t is not None and t.status == "completed" and t.completed_by == agent and (
                token is None or token == t.completed_token):
            reply, events = self.run(None, "complete", task=tid, agent=agent, token=token, result=result)
            assert events == [] and reply == t.frozen  # a retry: answered again, nothing changes
            return
        expect = self.held_error(t, agent, token)
        out = self.run(expect, "complete", task=tid, agent=agent, token=token, result=result)
        if expect is not None:
            return
        assert t is not None
        reply, events = out
        t.completed_by, t.completed_token = agent, t.token
        self.end_claim(t, "completed")
        topics = self.touch(agent) + ["task.completed", *self.claim_ended(agent, tid, completed=True)]
        self.agents[agent].completed += 1
        woken = self.wake(tid)
        assert {e.body["task_id"] for e in events if e.topic == "task.available"} == woken
        self.check_topics(events, topics + ["task.available"] * len(woken))
        assert (reply["status"], reply["result"], reply["completed_by"]) == ("completed", result, agent)
        t.frozen = reply

    @rule(i=task_index, known_=known, who_=who, mode=token_mode)
    def fail(self, i: int, known_: bool, who_: str, mode: str) -> None:
        tid, t, agent, token = self.pick(i, known_, who_, mode)
        expect = self.held_error(t, agent, token)
        out = self.run(expect, "fail", task=tid, agent=agent, token=token, error="boom")
        if expect is not None:
            return
        assert t is not None
        t.attempts += 1
        self.end_claim(t, "dead" if t.attempts >= t.max_attempts else "available", "failed")
        topics = self.touch(agent) + ["task.dead" if t.status == "dead" else "task.failed",
                                      *self.claim_ended(agent, tid, completed=False)]
        self.agents[agent].failed += 1
        if t.status == "dead":  # the broker raises a blocker for every task left waiting on it
            stranded = sorted(w.id for w in self.tasks.values() if w.status == "waiting" and tid in w.depends_on)
            raised = [e.body for e in out[1] if e.topic == "blocker.raised"]
            assert [(b["task"], b["agent"], b["type"]) for b in raised] == \
                [(w, "zmesh", "dependency_dead") for w in stranded]
            for _ in stranded:
                self.blockers[f"blk-{len(self.blockers) + 1}"] = ["zmesh", True]
            topics += ["blocker.raised"] * len(stranded)
        self.check_topics(out[1], topics)

    @rule(i=task_index, known_=known, who_=who, mode=token_mode)
    def release(self, i: int, known_: bool, who_: str, mode: str) -> None:
        tid, t, agent, token = self.pick(i, known_, who_, mode)
        expect = self.held_error(t, agent, token)
        out = self.run(expect, "release", task=tid, agent=agent, token=token)
        if expect is not None:
            return
        assert t is not None
        self.end_claim(t, "available", "released")
        topics = self.claim_ended(agent, tid, completed=False) + self.touch(agent)
        assert [(e.topic, e.body["reason"]) for e in out[1] if e.topic == "task.released"] == \
            [("task.released", "released")]
        self.check_topics(out[1], ["task.released", *topics])

    @rule(i=task_index, known_=known)
    def admin_release(self, i: int, known_: bool) -> None:
        """An admin force-releases a task claim: it ends like a release, but the holder's
        lease is not touched, and the task's history says an admin ended it."""
        tid = self.tid(i, known_)
        t = self.tasks.get(tid)
        expect = NotFound if t is None else (None if t.status == "claimed" else Conflict)
        out = self.run(expect, "admin_release", task=tid, reason="stuck")
        if expect is not None:
            return
        assert t is not None and t.owner is not None
        owner = t.owner
        self.end_claim(t, "available", "admin_released")
        topics = self.claim_ended(owner, tid, completed=False)
        assert [(e.body["reason"], e.body["agent"]) for e in out[1] if e.topic == "task.released"] == \
            [("admin_released", owner)]
        self.check_topics(out[1], ["task.released", "audit.admin", *topics])

    @rule(i=task_index, known_=known)
    def admin_requeue(self, i: int, known_: bool) -> None:
        """An admin puts a dead task back in the pool with its attempts at zero."""
        tid = self.tid(i, known_)
        t = self.tasks.get(tid)
        expect = NotFound if t is None else (None if t.status == "dead" else Conflict)
        out = self.run(expect, "admin_requeue", task=tid)
        if expect is not None:
            return
        assert t is not None
        t.status, t.attempts = "available", 0
        assert (out[0]["status"], out[0]["attempts"]) == ("available", 0)
        self.check_topics(out[1], ["task.requeued", "audit.admin"])

    @rule(i=task_index, known_=known, who_=who, mode=token_mode, ttl=TTLS)
    def renew(self, i: int, known_: bool, who_: str, mode: str, ttl: float | None) -> None:
        tid, t, agent, token = self.pick(i, known_, who_, mode)
        expect = self.held_error(t, agent, token)
        out = self.run(expect, "renew", task=tid, agent=agent, token=token, ttl=ttl)
        if expect is not None:
            return
        assert t is not None
        reply, events = out
        assert reply["token"] == t.token
        self.check_topics(events, self.touch(agent, ttl))  # a renew with a ttl keeps the lease at least that long
        effective = ttl or self.claim_ttl.get(tid)
        if effective:
            self.claim_dl[tid] = self.mono + effective

    @rule(agent=agents, mode=st.sampled_from(["none", "right", "wrong"]))
    def heartbeat(self, agent: str, mode: str) -> None:
        a = self.agents.get(agent)
        lease = None if mode == "none" or a is None else (a.lease if mode == "right" else a.lease + 1)
        if a is None or (lease is not None and lease != a.lease):
            self.run(LeaseExpired, "heartbeat", agent=agent, lease=lease)
            return
        reply, events = self.run(None, "heartbeat", agent=agent, lease=lease)
        assert reply == {"agent": agent, "lease": a.lease, "ttl": a.ttl}
        self.lease_dl[agent] = self.mono + a.ttl
        self.check_topics(events, self.heard(agent))

    @rule(agent=agents, use_caps=caps, ttl=TTLS)
    def register(self, agent: str, use_caps: list[str], ttl: float | None) -> None:
        reply, events = self.run(None, "register", agent=agent, capabilities=use_caps, ttl=ttl)
        a = self.agents.get(agent)
        if a is None:
            self.agents[agent] = a = MAgent(caps=use_caps, ttl=ttl or DEFAULT_TTL, implicit=False)
            self.new_idle(a)
        else:
            a.caps, a.ttl, a.implicit = use_caps, ttl or DEFAULT_TTL, False
        self.set_lease_from_events(agent)
        self.lease_dl[agent] = self.mono + a.ttl
        assert reply == {"agent": agent, "lease": a.lease, "ttl": a.ttl}
        self.check_topics(events, ["agent.registered", *self.heard(agent)])

    @rule(agent=agents)
    def unregister(self, agent: str) -> None:
        if agent not in self.agents:
            self.run(NotFound, "unregister", agent=agent)
            return
        reply, events = self.run(None, "unregister", agent=agent)
        held = sorted(t.id for t in self.tasks.values() if t.owner == agent)
        assert sorted(reply["released"]) == held
        assert sorted(e.body["task_id"] for e in events if e.topic == "task.released") == held
        for tid in held:
            self.end_claim(self.tasks[tid], "available", "unregistered")
        del self.agents[agent]
        del self.lease_dl[agent]
        self.evasive_dl.pop(agent, None)
        self.check_topics(events, ["task.released"] * len(held) + ["agent.unregistered"])

    def apply_expiry(self, events: list[Event]) -> None:
        """Model of expire at self.mono: every deadline <= now fires in time order (a lease
        before a claim on the same instant): an agent silent for EVASIVE_AFTER of its TTL
        turns evasive, a lapsed lease releases its claims and ends the agent, a claim's own
        TTL releases the claim (and an agent left without a task is idle again)."""
        now = self.mono
        due = sorted([(d, 0, a) for a, d in self.lease_dl.items() if d <= now] +
                     [(d, 1, tid) for tid, d in self.claim_dl.items() if d <= now] +
                     [(d, 2, a) for a, d in self.evasive_dl.items() if d <= now])
        expected: list[tuple[Any, ...]] = []
        for _, kind, key in due:
            if kind == 0:
                held = self.held(key)
                for tid in held:
                    self.end_claim(self.tasks[tid], "available", "lease_expired")
                    expected.append(("task.released", tid, key, "lease_expired"))
                expected.append(("agent.expired", key, tuple(held)))
                del self.agents[key]
                del self.lease_dl[key]
                self.evasive_dl.pop(key, None)
            elif kind == 1:
                t = self.tasks[key]
                if key not in self.claim_dl or t.status != "claimed":
                    continue  # released with its agent's lease just before
                assert t.owner is not None
                owner = t.owner
                self.end_claim(t, "available", "claim_expired")
                expected.append(("task.released", key, owner, "claim_expired"))
                expected += [(topic, owner) for topic in self.claim_ended(owner, key, completed=False)]
            elif key in self.evasive_dl:
                del self.evasive_dl[key]
                self.agents[key].evasive = True
                expected.append(("agent.evasive", key))
        got: list[tuple[Any, ...]] = []
        for e in events:
            if e.topic == "task.released":
                got.append((e.topic, e.body["task_id"], e.body["agent"], e.body["reason"]))
            elif e.topic == "agent.expired":
                got.append((e.topic, e.body["agent"], tuple(sorted(e.body["released"]))))
            else:
                got.append((e.topic, e.body["agent"]))
        assert sorted(got) == sorted(expected), (got, expected)

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.0, 3.0, 4.0, 6.0, "drain"]))
    def advance(self, dt: float | str) -> None:
        if dt == "drain":
            self.drain()
            return
        self.mono += dt  # type: ignore[operator]
        self.apply_expiry(self.expire())

    def drain(self) -> None:
        """Nobody speaks for longer than any TTL: expire leaves no claim and no agent."""
        self.mono += MAX_TTL + 0.5
        self.apply_expiry(self.expire())
        status = self.query("status")
        assert status["claims"] == 0 and status["agents"] == 0
        assert status["tasks"]["claimed"] == 0

    @rule(downtime=st.sampled_from([0.0, 3.0, 1000.0]), clean=st.booleans())
    def restart(self, downtime: float, clean: bool) -> None:
        """A new broker on the same data after some downtime: every lease and claim TTL
        starts afresh, nothing expires because of the downtime. A clean shutdown leaves a
        claim index (read instead of every task); a crash leaves none."""
        if clean:
            with self.store.write() as txn:
                self.core.checkpoint(txn)
        self.mono += downtime
        self.core = Core(self.settings)
        with self.store.write() as txn:
            self.core.recover(txn, self.now())
        assert b"claim_index" not in self.store.tables["meta"]  # consumed: never stale later
        self.lease_dl = {a: self.mono + m.ttl for a, m in self.agents.items()}
        self.claim_dl = {tid: self.mono + ttl for tid, ttl in self.claim_ttl.items() if ttl}
        # presence survives (stored); liveness starts afresh: every agent alive, full period
        self.evasive_dl = {a: self.mono + m.ttl * protocol.EVASIVE_AFTER for a, m in self.agents.items()}
        for m in self.agents.values():
            m.evasive = False
        assert self.expire() == []

    # ================================================================ invariants
    @invariant()
    def tasks_match_model(self) -> None:
        tasks, _ = self.views()
        assert [t["id"] for t in tasks] == sorted(self.tasks)
        status_of = {t["id"]: t["status"] for t in tasks}
        for view in tasks:
            m = self.tasks[view["id"]]
            assert view["status"] == m.status, (view, m)
            assert (view["owner"], view["token"]) == (m.owner, m.token)
            # owner and token present iff claimed (one owner at most, by construction)
            assert (view["owner"] is not None) == (view["token"] is not None) == (m.status == "claimed")
            assert view["attempts"] == m.attempts
            assert (view["priority"], view["requires"], view["max_attempts"], view["depends_on"]) == \
                (m.priority, m.requires, m.max_attempts, m.depends_on)
            if m.status == "claimed":
                deadlines = [d for d in (self.claim_dl.get(m.id), self.lease_dl[m.owner]) if d is not None]
                assert view["expires_in"] == round(min(deadlines) - self.mono, 3)
                assert view["expires_in"] > 0, "a claim outlived its deadline"
            else:
                assert view["expires_in"] is None
            if m.status == "completed":
                assert view == m.frozen, "a completed task changed"
            if m.status == "dead":
                assert view["attempts"] == view["max_attempts"]
            else:
                assert view["attempts"] < view["max_attempts"]
            if m.status == "waiting":
                assert any(status_of[d] != "completed" for d in view["depends_on"])
            else:
                assert all(status_of[d] == "completed" for d in view["depends_on"])

    @invariant()
    def agents_match_model(self) -> None:
        _, agent_views = self.views()
        assert {a["id"] for a in agent_views} == set(self.agents)
        for view in agent_views:
            m = self.agents[view["id"]]
            assert (view["lease"], view["ttl"], view["capabilities"], view["implicit"]) == \
                (m.lease, m.ttl, m.caps, m.implicit)
            assert (view["completed"], view["failed"]) == (m.completed, m.failed)
            assert view["expires_in"] == round(self.lease_dl[view["id"]] - self.mono, 3)
            assert view["expires_in"] > 0, "a lease outlived its TTL"
            assert view["state"] == self.shown_state(view["id"])
            assert view["liveness"] == ("evasive" if m.evasive else "alive")
            assert view["position"] == self.position(view["id"])
            assert view["claims"] == self.held(view["id"])
            assert (view["waiting_since"] is None) == (view["state"] != "idle")
        assert set(self.live_leases) == set(self.agents)

    @invariant()
    def status_counts(self) -> None:
        tasks, _ = self.views()
        status = self.query("status")
        census = dict.fromkeys(protocol.STATUSES, 0)
        for t in tasks:
            census[t["status"]] += 1
        assert status["tasks"] == census
        assert status["claims"] == census["claimed"]
        assert status["agents"] == len(self.agents)
        assert status["seq"] == len(self.events)
        assert status["token"] == self.max_granted

    @invariant()
    def event_log(self) -> None:
        n, size = len(self.events), self.settings.event_log_size
        assert [e["seq"] for e in self.events] == list(range(1, n + 1))
        if n <= size:
            rep = self.query("replay", since=0, limit=protocol.MAX_REPLAY_LIMIT)
            assert rep["events"] == self.events and rep["last_seq"] == n
            return
        with self.store.read() as txn:
            try:
                self.core.handle(self.core.batch(txn, self.now()), "replay",
                                 protocol.validate(protocol.OPS["replay"], {"since": 0}))
            except SnapshotRequired as exc:
                assert exc.details["oldest"] == n - size + 1
            else:
                raise AssertionError("replay of a trimmed range answered")
        kept = self.query("replay", since=n - size, limit=protocol.MAX_REPLAY_LIMIT)
        assert kept["events"] == self.events[n - size:]

    @invariant()
    def one_owner_per_claim_record(self) -> None:
        # a task's claim record is stored next to the task (key id + NUL), none in "claims"
        assert not self.store.tables["claims"]
        claims = {k[:-1].decode() for k in self.store.tables["tasks"] if k.endswith(b"\0")}
        assert claims == {t.id for t in self.tasks.values() if t.status == "claimed"}
        held = self.inspect().held
        index = [(agent, key) for agent, keys in held.items() for key in keys]
        owners = {key.split(":", 1)[1]: agent for agent, key in index}
        assert len(owners) == len(index)  # no resource is in two agents' index
        assert all(held.values()), "no empty entries"
        assert owners == {t.id: t.owner for t in self.tasks.values() if t.status == "claimed"}
        # presence asks "does it hold a task?" on every claim: the counts mirror the index
        busy = {a: len(self.held(a)) for a in self.agents if self.held(a)}
        assert self.core.claims.busy_count == busy
        for agent in busy:
            assert self.core.claims.current_busy(agent) in {f"task:{t}".encode() for t in self.held(agent)}


CoreMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCoreMachine = CoreMachine.TestCase
