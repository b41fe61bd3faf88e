"""``zmesh agent ...``, ``agents``, ``helpers``, ``blocker ...`` and ``stats`` end to end,
as real processes against a real broker: text and --json output, exit codes, one-line
errors naming the option."""

from __future__ import annotations

import json
from typing import Any

import pytest

from zmesh.cli._docs import JSON_SHAPES
from zmesh.testing import BrokerProcess

from .test_cli import Cli


@pytest.fixture
def z(broker: BrokerProcess) -> Cli:
    return Cli(broker.endpoint)


def keys(path: str, out: Any) -> None:
    expected = JSON_SHAPES[path]
    assert expected is not None and set(out) == set(expected[0]), (path, sorted(out))


def test_reports_print_the_state_and_the_place_in_the_idle_queue(z: Cli) -> None:
    for name in ("a1", "a2", "a3"):
        assert z.ok("agent", "idle", "--agent", name).strip() == \
            f"{name} idle, position {int(name[1])} in the idle queue"
    assert z.ok("agent", "busy", "t1", "--agent", "a1", "--message", "on it", "--cost", "1.5").strip() == \
        "a1 busy (t1)"
    out = z.json("agent", "completed", "t1", "--agent", "a1", "--json")
    keys("agent completed", out)
    assert (out["state"], out["position"]) == ("idle", 3)
    z.ok("agent", "completed", "t1", "--agent", "a1")  # the same task again: counted once
    assert z.json("stats", "a1", "--json")["completed"] == 1
    out = z.json("agent", "--json", "blocked", "--agent", "a2", "--reason", "flaky CI")
    keys("agent blocked", out)
    assert out["state"] == "blocked" and out["position"] is None
    assert z.ok("agent", "blocked", "--agent", "a2", "--reason", "still\nflaky").strip() == \
        "a2 blocked: still\\nflaky"  # escaped: one line
    keys("agent idle", z.json("agent", "idle", "--agent", "a2", "--json"))
    keys("agent busy", z.json("agent", "busy", "x", "--agent", "a4", "--json"))


def test_report_errors_exit_codes(z: Cli) -> None:
    z.fails(2, "agent", "blocked", "--agent", "a1", match="--reason")
    z.fails(2, "agent", "busy", "--agent", "a1", match="TASK")
    z.fails(2, "agent", "idle", "--agent", "a1", "--cost", "-1", match="--cost")
    z.fails(2, "agent", "help", "--agent", "a1", "--reason", "r", "--threshold", "2", match="--threshold")
    z.ok("task", "add", "t1")
    z.ok("task", "claim", "t1", "--agent", "a1")
    r = z.fails(1, "agent", "idle", "--agent", "a1", match="holds task t1")
    assert r.stdout == "" and r.stderr.count("\n") == 1
    z.fails(1, "agent", "completed", "t1", "--agent", "a1", "--json", match='"conflict"')
    z.ok("task", "done", "t1", "--agent", "a1")
    assert z.json("stats", "a1", "--json")["state"] == "idle"  # its last task done: idle again
    z.fails(1, "stats", "nobody", match="not_found")


def test_agents_lists_states_and_the_idle_queue(z: Cli) -> None:
    assert z.ok("agents").strip() == "no agents"
    z.ok("agent", "idle", "--agent", "w1")
    z.ok("agent", "idle", "--agent", "w2")
    z.ok("agent", "help", "--agent", "w3", "--reason", "stuck")
    z.ok("agent", "busy", "t9", "--agent", "w1")
    z.ok("agent", "idle", "--agent", "w1")
    out = z.json("agents", "--json")
    keys("agents", out)
    assert out["idle_queue"] == ["w2", "w1"]
    assert {a["id"]: a["state"] for a in out["agents"]} == {"w1": "idle", "w2": "idle", "w3": "help"}
    for a in out["agents"]:
        keys("stats", a)
    lines = z.ok("agents").splitlines()
    assert lines[0].split() == ["AGENT", "STATE", "LIVENESS", "TASK", "DONE", "FAILED", "COST", "WAITING",
                                "UPTIME", "CLAIMS"]
    rows = {line.split()[0]: line.split() for line in lines[1:4]}
    assert rows["w1"][1:4] == ["idle", "#2", "alive"] and rows["w3"][1] == "help"
    assert lines[-1] == "idle queue: w2 w1"


def test_helpers_in_order_and_threshold(z: Cli) -> None:
    with_caps = {"h1": ["py"], "h2": ["py", "go"], "h3": ["go"], "h4": ["py", "go", "sql"]}
    from zmesh import Client

    clients = [Client(z.endpoint, agent=name, capabilities=caps, ttl=60) for name, caps in with_caps.items()]
    for c in clients:  # registered in this order: the idle queue's
        c.connect()
    try:
        _helpers_cases(z)
    finally:
        for c in clients:
            c.close()


def _helpers_cases(z: Cli) -> None:
    out = z.json("helpers", "py", "go", "--json")
    keys("helpers", out)
    assert [(h["agent"], h["cover"]) for h in out["helpers"]] == \
        [("h2", 1.0), ("h4", 1.0), ("h1", 0.5), ("h3", 0.5)]
    assert [line.split("\t")[0] for line in z.ok("helpers", "py", "go", "--threshold", "1").splitlines()] == \
        ["h2", "h4"]
    assert z.ok("helpers", "rust").strip().startswith("no helpers found")
    z.fails(2, "helpers", "py", "--threshold", "nan", match="--threshold")
    out = z.json("agent", "help", "--agent", "h1", "--reason", "review", "--require", "go", "--json")
    keys("agent help", out)
    assert [h["agent"] for h in out["helpers"]] == ["h2", "h3", "h4"]


def test_blockers_raise_list_resolve(z: Cli) -> None:
    z.ok("task", "add", "deploy")
    out = z.json("blocker", "raise", "--agent", "a1", "--type", "access", "--description", "no creds",
                 "--severity", "high", "--require", "ops", "--task", "deploy", "--json")
    keys("blocker raise", out)
    keys("blocker resolve", out["blocker"])
    assert (out["blocker"]["id"], out["blocker"]["severity"], out["helpers"]) == ("blk-1", "high", [])
    line = z.ok("blocker", "raise", "--agent", "a2", "--type", "review", "--description", "need eyes").splitlines()[0]
    assert line.startswith("blk-2\topen\tmedium\ta2\treview: need eyes")
    assert z.json("stats", "a1", "--json")["state"] == "blocked"
    ls = z.json("blocker", "ls", "--json")
    keys("blocker ls", ls)
    assert [b["id"] for b in ls["blockers"]] == ["blk-1", "blk-2"] and ls["more"] is False
    page = z("blocker", "ls", "--limit", "1")
    assert page.stdout.startswith("blk-1\t") and "--after 'blk-1'" in page.stderr
    done = z.json("blocker", "resolve", "blk-1", "--agent", "ops", "--resolution", "granted", "--json")
    assert (done["status"], done["resolved_by"]) == ("resolved", "ops")
    assert z.json("stats", "a1", "--json")["state"] == "idle"
    z.fails(1, "blocker", "resolve", "blk-1", match="resolved already")
    z.fails(1, "blocker", "resolve", "blk-9", match="not_found")
    z.fails(1, "blocker", "raise", "--agent", "a", "--type", "t", "--description", "d", "--task", "nope",
            match="not_found")
    z.fails(2, "blocker", "raise", "--agent", "a", "--type", "t", "--description", "d", "--severity", "dire",
            match="--severity")
    assert [b["id"] for b in z.json("blocker", "ls", "--status", "resolved", "--json")["blockers"]] == ["blk-1"]
    assert json.loads(z.ok("blocker", "ls", "--all", "--status", "all", "--limit", "1", "--json"))["more"] is False
