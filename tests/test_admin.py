"""Issue 17, roles and admin ops: force-release, purge, requeue (core/admin.py), who may run
what (core/identity.py), the audit events, and `zmesh admin` against a real broker.

The core tests drive the state machine as the broker does (tests/test_core.py's Harness,
memory and LMDB stores); a refusal is checked to change nothing at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from zmesh import protocol
from zmesh.protocol.identity import ADMIN_OPS, OPERATOR_OPS, READ_OPS, may_run
from zmesh.errors import BadRequest, Conflict, Forbidden, NotFound, NotOwner, StaleToken
from zmesh.transport.keys import fingerprint
from zmesh.protocol import Event
from zmesh.testing import BrokerProcess

from .test_cli import Cli
from .test_core import Harness


@pytest.fixture(params=["memory", "lmdb"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(request.param, tmp_path / "db")
    yield harness
    harness.close()


@pytest.fixture
def z(broker: BrokerProcess) -> Cli:
    return Cli(broker.endpoint)

KEY_A = "A" * 40
KEY_B = "B" * 40


def as_key(h: Harness, op: str, key: str, role: str, **body: Any) -> tuple[Any, list[Event]]:
    """One request from a connection with ``key`` and ``role``, as the secure broker makes
    it. A refusal is raised after the transaction commits what the core kept (the audit
    event), as the broker does."""
    with h.store.write() as txn:
        b = h.core.batch(txn, h.now())
        b.key, b.role = key, role
        try:
            reply, events = h.core.handle(b, op, protocol.validate(protocol.OPS[op], body))
        except Exception as exc:
            h.events += b.events
            error = exc
        else:
            h.events += events
            return reply, events
    raise error


def audits(h: Harness, topic: str = "audit.refused") -> list[dict[str, Any]]:
    return [e.body for e in h.events if e.topic == topic]


# ---------------------------------------------------------------- the role table
def test_the_role_table() -> None:
    assert ADMIN_OPS == {"admin_release", "admin_purge", "admin_requeue", "requeue", "backup"}
    assert not READ_OPS & ADMIN_OPS
    assert OPERATOR_OPS == {"audit"} and OPERATOR_OPS <= READ_OPS
    assert {"status", "task_list", "task_get", "agent_list", "replay", "snapshot", "hello"} <= READ_OPS
    for op, spec in protocol.OPS.items():
        assert may_run(None, op) and may_run("admin", op)  # security off, admin: everything
        assert may_run("agent", op) == (not spec.admin and not spec.operator)
        assert may_run("observer", op) == (op in READ_OPS)
        if spec.writes:
            assert not may_run("observer", op), op
        assert not may_run("stranger", op)  # an unknown role runs nothing


# ---------------------------------------------------------------- admin_release
def test_release_a_task_held_by_another_agent(h: Harness) -> None:
    h.do("task_create", id="t1")
    claim = h.do("claim", task="t1", agent="w1")
    reply, events = h.call("admin_release", task="t1", reason="stuck for hours")
    assert reply == {"task": "t1", "agent": "w1", "released": ["t1"]}
    assert h.task("t1")["status"] == "available" and h.task("t1")["owner"] is None
    released = next(e for e in events if e.topic == "task.released")
    assert released.body["reason"] == "admin_released" and released.body["agent"] == "w1"
    audit = next(e for e in events if e.topic == "audit.admin")
    assert audit.body == {"op": "admin_release", "key": None, "task": "t1", "agent": "w1", "token": claim["token"],
                          "reason": "stuck for hours", "ts": audit.body["ts"]}
    assert h.task("t1")["history"][-1]["event"] == "admin_released"
    # the old holder learns how its claim ended
    err = h.refused(StaleToken, "complete", task="t1", agent="w1", token=claim["token"])
    assert "an admin released the claim of 'w1'" in str(err)
    # and the task is claimable again
    assert h.do("claim", task="t1", agent="w2")["token"] > claim["token"]


def test_release_an_agent_ends_its_lease_and_every_claim(h: Harness) -> None:
    for t in ("t1", "t2"):
        h.do("task_create", id=t)
        h.do("claim", task=t, agent="w1")
    h.do("reserve", agent="w1", paths=["src/**"])
    reply, events = h.call("admin_release", agent="w1")
    assert reply["agent"] == "w1" and set(reply["released"]) >= {"t1", "t2"} and len(reply["released"]) == 3
    assert "w1" not in h.agents()
    assert {h.task(t)["status"] for t in ("t1", "t2")} == {"available"}
    gone = next(e for e in events if e.topic == "agent.unregistered")
    assert gone.body["reason"] == "admin_released"
    assert h.do("reserve", agent="w2", paths=["src/x.py"])["reservations"]  # the path is free


def test_release_refusals_change_nothing(h: Harness) -> None:
    h.do("task_create", id="t1")
    h.refused(Conflict, "admin_release", task="t1")  # not claimed
    h.refused(NotFound, "admin_release", task="nope")
    h.refused(NotFound, "admin_release", agent="nobody")
    assert "exactly one" in str(h.refused(BadRequest, "admin_release"))
    h.do("claim", task="t1", agent="w1")
    assert "exactly one" in str(h.refused(BadRequest, "admin_release", task="t1", agent="w1"))


# ---------------------------------------------------------------- admin_purge
def counts(h: Harness) -> dict[str, int]:
    return h.do("status")["tasks"]


def test_purge_one_task_keeps_the_counts_and_indexes(h: Harness) -> None:
    for t in ("t1", "t2"):
        h.do("task_create", id=t)
    h.do("task_create", id="w", depends_on=["t2"])
    reply, events = h.call("admin_purge", task="t1")
    assert reply == {"purged": ["t1"], "kept": [], "more": False}
    h.refused(NotFound, "task_get", task="t1")
    assert counts(h)["available"] == 1 and counts(h)["waiting"] == 1
    assert [t["id"] for t in h.do("task_list", status="available")["tasks"]] == ["t2"]
    assert [e.topic for e in events] == ["task.purged", "audit.admin"]
    # a task another waits on stays, naming the dependent; a waiting one goes with its links
    err = h.refused(Conflict, "admin_purge", task="t2")
    assert "tasks wait on it: w" in str(err)
    h.do("admin_purge", task="w")
    assert counts(h)["waiting"] == 0
    h.do("admin_purge", task="t2")  # nothing waits on it now
    assert sum(counts(h).values()) == 0
    assert h.do("claim_next", agent="a") is None


def test_purge_refuses_a_claimed_task(h: Harness) -> None:
    h.do("task_create", id="t1")
    h.do("claim", task="t1", agent="w1")
    assert "release it first" in str(h.refused(Conflict, "admin_purge", task="t1"))
    h.refused(NotFound, "admin_purge", task="nope")
    assert "exactly one" in str(h.refused(BadRequest, "admin_purge", task="t1", status="dead"))


def _kill(h: Harness, task: str) -> None:
    h.do("task_create", id=task, max_attempts=1)
    h.do("claim", task=task, agent="w")
    h.do("fail", task=task, agent="w", error="boom")


def test_purge_by_status_in_bounded_pages(h: Harness) -> None:
    for i in range(5):
        _kill(h, f"d{i}")
    h.do("task_create", id="after-d1", depends_on=["d1"])  # waits on a dead task: d1 stays
    for i in range(3):
        h.do("task_create", id=f"c{i}")
        h.do("claim", task=f"c{i}", agent="w")
        h.do("complete", task=f"c{i}", agent="w")
    first = h.do("admin_purge", status="dead", limit=2)
    assert first["purged"] == ["d0", "d2"] and first["kept"] == [{"task": "d1", "reason": "tasks wait on it: after-d1"}]
    assert first["more"]
    second = h.do("admin_purge", status="dead", limit=2)
    assert second["purged"] == ["d3", "d4"] and not second["more"]
    assert counts(h)["dead"] == 1 and counts(h)["completed"] == 3
    done = h.do("admin_purge", status="completed")
    assert done == {"purged": ["c0", "c1", "c2"], "kept": [], "more": False}
    assert counts(h)["completed"] == 0 and h.do("task_list", status="completed")["tasks"] == []
    assert h.do("admin_purge", status="completed") == {"purged": [], "kept": [], "more": False}


# ---------------------------------------------------------------- admin_requeue
def test_requeue_a_dead_task(h: Harness) -> None:
    _kill(h, "d")
    h.do("task_create", id="next", depends_on=["d"])
    reply, events = h.call("admin_requeue", task="d")
    assert reply["status"] == "available" and reply["attempts"] == 0
    assert reply["history"][-1]["event"] == "requeued" and reply["history"][-1]["attempts"] == 1
    assert [e.topic for e in events] == ["task.requeued", "audit.admin"]
    assert counts(h)["dead"] == 0 and counts(h)["available"] == 1
    claim = h.do("claim_next", agent="w2")
    assert claim["task"] == "d"
    h.do("complete", task="d", agent="w2", token=claim["token"])
    assert h.task("next")["status"] == "available"  # its dependent woke
    h.refused(Conflict, "admin_requeue", task="next")  # not dead
    h.refused(NotFound, "admin_requeue", task="nope")


# ---------------------------------------------------------------- roles in the core
def test_an_observer_reads_and_writes_nothing(h: Harness) -> None:
    h.do("task_create", id="t1")
    for op, body in (("status", {}), ("task_list", {}), ("task_get", {"task": "t1"}), ("agent_list", {}),
                     ("snapshot", {}), ("replay", {"since": 0})):
        as_key(h, op, KEY_A, "observer", **body)
    before = h.raw()
    for op, body in (("task_create", {"id": "t2"}), ("claim", {"task": "t1", "agent": "o"}),
                     ("heartbeat", {"agent": "o"}), ("register", {"agent": "o"}), ("publish", {"topic": "x"}),
                     ("admin_purge", {"task": "t1"})):
        with pytest.raises(Forbidden, match=f"op '{op}' is not allowed for role observer"):
            as_key(h, op, KEY_A, "observer", **body)
    after = h.raw()
    # the only write: the one audit event of the first refusal (the rest came within a second)
    assert {t: v for t, v in after.items() if t not in ("events", "counters")} == \
        {t: v for t, v in before.items() if t not in ("events", "counters")}
    [audit] = audits(h)
    assert audit["op"] == "task_create" and audit["role"] == "observer" and audit["code"] == "forbidden"
    assert audit["key"] == fingerprint(KEY_A.encode()) and audit["suppressed"] == 0
    h.at(h.mono + 1.5)
    with pytest.raises(Forbidden):
        as_key(h, "task_create", KEY_A, "observer", id="t3")
    assert audits(h)[-1]["suppressed"] == 5  # the five left out are counted


def test_admin_ops_for_admins_only(h: Harness) -> None:
    h.do("task_create", id="t1")
    as_key(h, "claim", KEY_A, "agent", task="t1", agent="w1")
    with pytest.raises(Forbidden, match="admin op"):
        as_key(h, "admin_release", KEY_A, "agent", task="t1")
    assert h.task("t1")["owner"] == "w1"
    assert audits(h)[-1]["op"] == "admin_release" and audits(h)[-1]["role"] == "agent"
    reply, _ = as_key(h, "admin_release", KEY_B, "admin", task="t1")
    assert reply["agent"] == "w1"
    assert audits(h, "audit.admin")[-1]["key"] == fingerprint(KEY_B.encode())
    # an admin is still bound by agent ownership: it acts through admin ops, not as the agent
    as_key(h, "claim", KEY_A, "agent", task="t1", agent="w1")
    with pytest.raises(NotOwner, match="belongs to another key"):
        as_key(h, "release", KEY_B, "admin", task="t1", agent="w1")
    assert audits(h)[-1]["code"] == "not_owner" and audits(h)[-1]["agent"] == "w1"


# ---------------------------------------------------------------- zmesh admin, a real broker
def test_zmesh_admin_commands(z: Cli) -> None:
    z.ok("task", "add", "t1")
    z.ok("task", "claim", "t1", "--agent", "w1")
    out = z.json("admin", "release", "--task", "t1", "--reason", "stuck", "--json")
    assert out == {"task": "t1", "agent": "w1", "released": ["t1"]}
    assert z.show("t1")["status"] == "available"
    z.fails(1, "admin", "release", "--task", "t1", match="not claimed")
    z.fails(2, "admin", "release", match="exactly one of --task or --agent")
    z.fails(2, "admin", "release", "--task", "t1", "--agent", "w1", match="exactly one")
    for i in range(3):
        z.ok("task", "add", f"d{i}", "--max-attempts", "1")
        z.ok("task", "claim", f"d{i}", "--agent", "w")
        z.ok("task", "fail", f"d{i}", "--agent", "w", "--error", "e")
    assert z.json("admin", "requeue", "d0", "--json") == {"requeued": ["d0"]}
    assert z.show("d0")["status"] == "available"
    z.fails(1, "admin", "requeue", "d0", match="not dead")
    assert z.json("admin", "requeue", "--dead", "--json") == {"requeued": ["d1", "d2"]}
    z.fails(2, "admin", "requeue", "d0", "--dead", match="exactly one")
    z.fails(2, "admin", "requeue", "d0", "--agent", "a", match="--agent goes with --message")
    for i in range(3):
        z.ok("task", "claim", f"d{i}", "--agent", "w")
        z.ok("task", "done", f"d{i}", "--agent", "w")
    assert z.json("admin", "purge", "--status", "completed", "--limit", "2", "--json")["purged"] == ["d0", "d1"]
    assert "purged 1 task(s)" in z.ok("admin", "purge", "--status", "completed")
    z.fails(1, "admin", "purge", "d0", match="no task 'd0'")
    z.fails(2, "admin", "purge", "t1", "--status", "dead", match="exactly one")
    z.fails(2, "admin", "purge", "t1", "--limit", "3", match="--limit goes with --status")
    assert z.json("admin", "purge", "t1", "--json") == {"purged": ["t1"], "kept": []}
    assert z.json("task", "ls", "--json")["tasks"] == []
