"""Issue 18, the audit trail against a real broker process: a workload through the client,
then ``zmesh audit`` with each filter and ``--json`` returns exactly the expected records;
with security on the records carry the key's fingerprint and role, an agent key is refused
the query while observer and admin keys read it; retention bounded by
ZMESH_AUDIT_RETENTION, cut to a lowered bound at the next start."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest

import zmesh
from zmesh import Client
from zmesh.transport.keys import fingerprint, load_public
from zmesh.testing import BrokerProcess, free_port

from .test_cli import Cli, clean_env, run
from .test_security import Keys

pytestmark = pytest.mark.timeout(180)



@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


#: (op, agent, task, result) of a record
Row = tuple[str, Any, Any, str]


def rows(records: list[dict[str, Any]]) -> list[Row]:
    return [(r["op"], r["agent"], r["task"], r["result"]) for r in records]


def workload(endpoint: str) -> list[Row]:
    """Writes, refusals and reads through the client; returns the rows the default mode
    (writes) records, oldest first."""
    with Client(endpoint) as c:
        c.create_task("t1")
        c.create_task("t2")
        claim = c.claim("t1", agent="w1")
        assert c.claim("t1", agent="w2") is None  # lost the race: conflict
        with pytest.raises(zmesh.StaleToken):
            c.complete("t1", token=claim.token + 1, agent="w1")
        c.complete("t1", token=claim.token, agent="w1")
        c.task("t1")  # reads that answer are not recorded
        c.status()
        with pytest.raises(zmesh.NotFound):
            c.task("missing")
        assert c.claim_next(agent="w2").task_id == "t2"
    return [("task_create", None, "t1", "ok"), ("task_create", None, "t2", "ok"), ("claim", "w1", "t1", "ok"),
            ("claim", "w2", "t1", "conflict"), ("complete", "w1", "t1", "stale_token"),
            ("complete", "w1", "t1", "ok"), ("task_get", None, "missing", "not_found"),
            ("claim_next", "w2", "t2", "ok")]


def test_zmesh_audit_returns_exactly_the_expected_records(broker: BrokerProcess) -> None:
    z = Cli(broker.endpoint)
    before = time.time()
    expected = workload(broker.endpoint)
    middle = time.time()
    with Client(broker.endpoint) as c:
        c.create_task("t3")
    expected.append(("task_create", None, "t3", "ok"))

    everything = z.json("audit", "--json")
    assert set(everything) == {"records"}
    records = everything["records"]
    assert rows(records) == expected  # oldest first
    assert [r["id"] for r in records] == list(range(1, len(expected) + 1))
    assert all(before <= r["ts"] <= time.time() and r["key"] is None and r["role"] is None for r in records)
    seqs = [r["seq"] for r in records]
    with Client(broker.endpoint) as c:
        assert seqs == sorted(seqs) and seqs[-1] == c.status()["seq"]  # the seq after each op

    def only(**match: Any) -> list[Row]:
        return [row for row, r in zip(expected, records) if all(r[k] == v for k, v in match.items())]

    assert rows(z.json("audit", "--agent", "w1", "--json")["records"]) == only(agent="w1")
    assert rows(z.json("audit", "--task", "t1", "--json")["records"]) == only(task="t1")
    assert rows(z.json("audit", "--op", "claim", "--json")["records"]) == only(op="claim")
    assert rows(z.json("audit", "--result", "conflict", "--json")["records"]) == [("claim", "w2", "t1", "conflict")]
    assert rows(z.json("audit", "--op", "complete", "--result", "ok", "--json")["records"]) == \
        [("complete", "w1", "t1", "ok")]
    assert rows(z.json("audit", "--limit", "2", "--json")["records"]) == expected[-2:]  # the newest two
    assert rows(z.json("audit", "--since", "1h", "--json")["records"]) == expected
    iso = dt.datetime.fromtimestamp(middle).astimezone().isoformat()
    assert rows(z.json("audit", "--since", iso, "--json")["records"]) == [("task_create", None, "t3", "ok")]
    assert z.json("audit", "--agent", "nobody", "--json") == {"records": []}

    # text: one line per record, oldest first, with time, op, agent, task, result, seq, key
    lines = z.ok("audit", "--task", "t1").splitlines()
    assert len(lines) == len(only(task="t1"))
    assert "  claim  agent=w2  task=t1  conflict  seq=" in lines[2] and lines[2].endswith("key=-")
    assert lines[0].startswith(dt.datetime.fromtimestamp(records[0]["ts"]).isoformat(timespec="seconds")[:16])


def test_bad_options_exit_2_and_no_broker_exits_3(tmp_path: Path) -> None:
    nowhere = Cli(f"tcp://127.0.0.1:{free_port()}")
    for args, option in ((("--op", "nope"), "--op"), (("--result", "maybe"), "--result"),
                         (("--since", "yesterday"), "--since"), (("--limit", "0"), "--limit")):
        r = nowhere.fails(2, "audit", *args)
        assert option in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run("--broker", nowhere.endpoint, "--timeout", "0.5", "audit")
    assert r.returncode == 3 and "unreachable" in r.stderr


def test_retention_is_bounded_by_the_setting_and_cut_at_the_next_start(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZMESH_AUDIT_RETENTION", "5")
    b = BrokerProcess(tmp_path / "data").start()
    try:
        with Client(b.endpoint) as c:
            for i in range(12):
                c.create_task(f"t{i}")
            page = c.audit_page(limit=100)
            assert [r["id"] for r in page["records"]] == [12, 11, 10, 9, 8] and page["next"] is None
    finally:
        assert b.stop() == 0
    monkeypatch.setenv("ZMESH_AUDIT_RETENTION", "2")
    b = BrokerProcess(tmp_path / "data").start()
    try:
        records = Cli(b.endpoint).json("audit", "--json")["records"]
        assert [(r["id"], r["task"]) for r in records] == [(11, "t10"), (12, "t11")]
    finally:
        assert b.stop() == 0


def test_audit_off_records_nothing_and_all_records_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZMESH_AUDIT", "off")
    b = BrokerProcess(tmp_path / "off").start()
    try:
        workload(b.endpoint)
        assert Cli(b.endpoint).json("audit", "--json") == {"records": []}
    finally:
        assert b.stop() == 0
    monkeypatch.setenv("ZMESH_AUDIT", "all")
    b = BrokerProcess(tmp_path / "all").start()
    try:
        with Client(b.endpoint) as c:
            c.create_task("t1")
            c.task("t1")
            c.status()
            assert [r["op"] for r in reversed(c.audit())] == ["task_create", "task_get", "status"]
    finally:
        assert b.stop() == 0


def test_with_security_records_carry_the_key_and_only_observers_and_admins_read_them(keys: Keys) -> None:
    curve = {"server_key": str(keys.broker_public)}
    agent_key = keys.client("worker")
    observer_key = keys.client("watcher", role="observer")
    admin_key = keys.client("root", role="admin")
    b = BrokerProcess(keys.data, extra=("--secure",))
    b.curve = keys.curve(agent_key)
    b.start()
    try:
        fp = {path: fingerprint(load_public(path.with_suffix(".key"), "key"))
              for path in (agent_key, observer_key, admin_key)}
        with Client(b.endpoint, agent="w1", key=str(agent_key), **curve) as worker, \
                Client(b.endpoint, key=str(observer_key), **curve) as watcher, \
                Client(b.endpoint, key=str(admin_key), **curve) as root:
            worker.create_task("t1")
            worker.claim("t1")
            with pytest.raises(zmesh.Forbidden, match="observer and admin keys"):
                worker.audit()
            with pytest.raises(zmesh.Forbidden):
                watcher.create_task("t2")
            seen = watcher.audit()
            assert root.audit() == seen
        assert [(r["op"], r["agent"], r["result"], r["key"], r["role"]) for r in reversed(seen)] == [
            ("register", "w1", "ok", fp[agent_key], "agent"),  # the client's agent, registered on first use
            ("task_create", None, "ok", fp[agent_key], "agent"), ("claim", "w1", "ok", fp[agent_key], "agent"),
            ("audit", None, "forbidden", fp[agent_key], "agent"),
            ("task_create", None, "forbidden", fp[observer_key], "observer")]
        # the command speaks with the key in ZMESH_KEY: an observer reads, an agent is refused
        env = clean_env(ZMESH_SERVER_KEY=str(keys.broker_public), ZMESH_KEY=str(observer_key))
        r = run("--broker", b.endpoint, "audit", "--agent", "w1", "--json", env=env)
        assert r.returncode == 0, r.stderr
        assert [(x["op"], x["key"]) for x in json.loads(r.stdout)["records"]] == [  # the worker unregistered on close
            ("register", fp[agent_key]), ("claim", fp[agent_key]), ("unregister", fp[agent_key])]
        env["ZMESH_KEY"] = str(agent_key)
        r = run("--broker", b.endpoint, "audit", env=env)
        assert r.returncode == 1 and "forbidden" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    finally:
        b.stop()
        b.kill()
