"""Issue 14's acceptance, end to end: agent processes and a coordinator against a real
broker process. Every state change reaches the coordinator (Client.watch / follow, both
drivers); the idle queue and positions are right; completed counts up; an agent killed
with SIGKILL is evasive, then gone, its claims released within its TTL + 1 s; helpers
are exactly the idle agents meeting the threshold, in order."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import pytest

from zmesh import Client
from zmesh.client import Roster
from zmesh.protocol import Event
from zmesh.testing import BrokerProcess

from .conftest import Procs, wait_for

#: an agent process: reads commands on stdin, answers each with one JSON line
AGENT = r"""
import json, sys
from zmesh import Client
endpoint, name, caps, ttl = sys.argv[1], sys.argv[2], sys.argv[3].split(",") if sys.argv[3] else [], float(sys.argv[4])
c = Client(endpoint, agent=name, capabilities=caps, ttl=ttl)
c.connect()  # registers the agent (idle, at the back of the idle queue) and starts heartbeating
print(json.dumps({"ready": name}), flush=True)
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "idle":
        out = c.report("idle")
    elif cmd in ("busy", "completed"):
        out = c.report(cmd, task=arg)
    elif cmd in ("blocked", "help"):
        out = c.report(cmd, reason=arg)
    elif cmd == "claim":
        claim = c.claim(arg)
        out = {"task": claim.task_id, "token": claim.token}
    elif cmd == "complete":
        out = c.complete(arg)
    print(json.dumps(out, default=str), flush=True)
"""


class Agent:
    def __init__(self, procs: Procs, endpoint: str, name: str, caps: str = "", ttl: float = 30.0) -> None:
        self.name = name
        self.proc = procs.python(AGENT, endpoint, name, caps, str(ttl))
        assert self.read() == {"ready": name}

    def do(self, line: str) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.read()

    def read(self) -> Any:
        assert self.proc.stdout is not None
        out = self.proc.stdout.readline()
        assert out, f"agent {self.name} died: {self.proc.stderr.read() if self.proc.stderr else ''}"
        return json.loads(out)


class Coordinator:
    """A coordinator: follow() in the background; what it saw, as it saw it."""

    def __init__(self, client: Any) -> None:
        self.seen: list[tuple[Event, dict[str, Any]]] = []
        self.roster: Roster | None = None
        self.lock = threading.Lock()
        client.follow(self.on_event)

    def on_event(self, roster: Roster, event: Event) -> None:
        with self.lock:
            self.roster = roster
            self.seen.append((event, {"idle_queue": list(roster.idle_queue),
                                      "completed": {a: r["completed"] for a, r in roster.agents.items()}}))

    def topics(self, agent: str) -> list[str]:
        with self.lock:
            return [e.topic for e, _ in self.seen if e.body.get("agent") == agent and e.topic.startswith("agent.")]

    def wait(self, topic: str, agent: str, count: int = 1, timeout: float = 5.0) -> tuple[Event, dict[str, Any]]:
        def found() -> Any:
            with self.lock:
                hits = [x for x in self.seen if x[0].topic == topic and x[0].body.get("agent") == agent]
            return hits[count - 1] if len(hits) >= count else None
        return wait_for(found, timeout=timeout, what=f"{topic} #{count} of {agent} at the coordinator")  # type: ignore[return-value]


def test_three_agents_and_a_coordinator(broker: BrokerProcess, procs: Procs, make_client: Any) -> None:
    endpoint = broker.endpoint
    coord = Coordinator(make_client(endpoint))
    wait_for(lambda: coord.roster is not None or _poke(endpoint), what="the coordinator's first event")
    agents = {n: Agent(procs, endpoint, n, "py") for n in ("a1", "a2", "a3")}  # one after another
    for n in ("a1", "a2", "a3"):
        coord.wait("agent.registered", n)
    assert coord.roster is not None and coord.roster.idle_queue[-3:] == ["a1", "a2", "a3"]

    steps = [  # (agent, command, topic the coordinator must see, position in the reply)
        ("a1", "busy t1", "agent.busy", None),
        ("a2", "idle", "agent.idle", 1),  # already idle: keeps its place
        ("a1", "completed t1", "agent.completed", 3),  # idle again, at the back
        ("a3", "blocked flaky-ci", "agent.blocked", None),
        ("a2", "help need-review", "agent.help", None),
        ("a3", "idle", "agent.idle", 2),
        ("a1", "busy t2", "agent.busy", None),
        ("a1", "completed t2", "agent.completed", 2),
    ]
    counts: dict[tuple[str, str], int] = {}
    for name, command, topic, position in steps:
        reply = agents[name].do(command)
        assert reply["position"] == position, (name, command, reply)
        counts[(topic, name)] = counts.get((topic, name), 0) + 1
        event, seen = coord.wait(topic, name, counts[(topic, name)])
        assert event.body["position"] == position
    assert coord.roster is not None
    assert coord.roster.idle_queue == ["a3", "a1"]
    assert seen["completed"]["a1"] == 2  # completed counts up, once per task
    assert coord.roster.agents["a2"]["state"] == "help"
    with Client(endpoint) as c:  # the coordinator's picture is the broker's
        snap = c.snapshot()
    assert snap["idle_queue"] == coord.roster.idle_queue
    assert {a["id"]: a["state"] for a in snap["agents"]} == \
        {a: r["state"] for a, r in coord.roster.agents.items()}
    for name in ("a1", "a2", "a3"):  # every change reached it, in order
        assert coord.topics(name) == ["agent.registered"] + [t for n, _, t, _ in steps if n == name]


def _poke(endpoint: str) -> bool:
    """An event for a coordinator that started on a quiet broker to see."""
    with Client(endpoint) as c:
        c.publish("poke")
    return False


def test_an_agent_killed_with_sigkill_is_evasive_then_gone(broker: BrokerProcess, procs: Procs) -> None:
    endpoint = broker.endpoint
    ttl = 1.5
    with Client(endpoint) as c, Client(endpoint) as watcher:
        c.create_task("held")
        coord = Coordinator(watcher)
        wait_for(lambda: coord.roster is not None or _poke(endpoint), what="the coordinator")
        victim = Agent(procs, endpoint, "victim", "", ttl)
        assert victim.do("claim held")["task"] == "held"
        assert c.task("held")["owner"] == "victim"
        os.kill(victim.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        coord.wait("agent.evasive", "victim", timeout=ttl + 1)
        evasive_after = time.monotonic() - killed
        coord.wait("agent.expired", "victim", timeout=ttl + 1)
        gone_after = time.monotonic() - killed
        assert evasive_after < gone_after <= ttl + 1.0, (evasive_after, gone_after)
        assert coord.topics("victim")[-2:] == ["agent.evasive", "agent.expired"]
        task = c.task("held")
        assert (task["status"], task["owner"], task["history"][-1]["event"]) == \
            ("available", None, "lease_expired")
        with coord.lock:
            released = [e for e, _ in coord.seen if e.topic == "task.released"]
        assert [(e.body["task_id"], e.body["reason"]) for e in released] == [("held", "lease_expired")]


def test_find_helpers_and_help_are_exactly_the_idle_agents_meeting_the_threshold(
        broker: BrokerProcess, make_client: Any) -> None:
    endpoint = broker.endpoint
    caps = {"w1": ["py", "go", "sql"], "w2": ["py"], "w3": ["go", "py"], "w4": ["rust"], "w5": ["py", "go"]}
    clients = {n: make_client(endpoint, agent=n, capabilities=cs, ttl=30) for n, cs in caps.items()}
    for n in caps:
        clients[n].register(capabilities=caps[n], ttl=30)
    clients["w5"].busy("t9")  # busy: never a helper
    clients["w1"].busy("t8")
    clients["w1"].idle()  # idle again: the back of the queue
    boss = make_client(endpoint)
    got = boss.find_helpers(["py", "go"])
    assert [(h["agent"], h["cover"]) for h in got] == [("w3", 1.0), ("w1", 1.0), ("w2", 0.5)]
    assert [h["position"] for h in got] == [2, 4, 1]
    assert [h["agent"] for h in boss.find_helpers(["py", "go"], 1.0)] == ["w3", "w1"]
    assert [h["agent"] for h in boss.find_helpers(["py", "go"], 0.0)] == ["w3", "w1", "w2", "w4"]
    assert [h["agent"] for h in boss.find_helpers(["sql"], 0.5)] == ["w1"]
    helpers = clients["w4"].help("need a go reviewer", requires=["go"])
    assert [h["agent"] for h in helpers] == ["w3", "w1"]  # not w4 itself, not busy w5
    blocker = clients["w2"].report_blocker("access", "no db creds", "high", ["sql", "py"])
    assert [(h["agent"], h["cover"]) for h in blocker["helpers"]] == [("w1", 1.0), ("w3", 0.5)]
    assert clients["w2"].agent_info()["state"] == "blocked"
    assert [b["id"] for b in boss.blockers()] == [blocker["blocker"]["id"]]
    boss.resolve_blocker(blocker["blocker"]["id"], resolution="granted")
    assert clients["w2"].stats()["state"] == "idle" and boss.blockers() == []


@pytest.mark.parametrize("restart", ["clean"])
def test_the_coordinator_recovers_from_a_broker_restart(broker_factory: Any, procs: Procs,
                                                         make_client: Any, restart: str) -> None:
    b = broker_factory()
    coord = Coordinator(make_client(b.endpoint))
    wait_for(lambda: coord.roster is not None or _poke(b.endpoint), what="the coordinator")
    with Client(b.endpoint, agent="a1", ttl=30) as a1:
        a1.busy("t1")
        coord.wait("agent.busy", "a1")
    b.stop()
    b.start()
    with Client(b.endpoint, agent="a1", ttl=30) as a1:
        a1.completed("t1")
        event, seen = coord.wait("agent.completed", "a1", timeout=15)
    assert seen["completed"]["a1"] == 1 and "a1" in seen["idle_queue"]
