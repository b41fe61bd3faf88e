"""The benchmark harness in --quick mode: it runs end to end and its outputs have the
promised structure (speed is judged by the harness itself, never by a unit test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_bench_writes_markdown_json_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    for key in ("date", "command", "machine", "claim", "contended", "throughput", "broadcast", "scale", "targets"):
        assert key in data, key
    for name in ("zmesh(full)", "raw-zmq", "raw-zmq+lmdb(full)", "raw-zmq+lmdb-group(full)"):
        r = data["claim"][name]
        assert r["latency_us"]["count"] == r["ops"] > 0 and r["durability"]
        assert r["violations"] == (r["ops"] if name == "raw-zmq" else 0)  # echo stores nothing
        assert r["latency_us"]["p50"] <= r["latency_us"]["p95"] <= r["latency_us"]["p99"] <= r["latency_us"]["max"]
        assert isinstance(r["hist"], str) and r["hist"]  # the raw HDR histogram
    assert data["contended"]["zmesh(full)"]["violations"] == 0
    assert data["contended"]["raw-zmq"]["violations"] > 0  # the echo probe has no store: the check can fail
    assert [row["clients"] for row in data["throughput"]["zmesh(full)"]] == [1, 16]
    for name in ("raw-zmq-pubsub", "zmesh(none)"):
        assert data["broadcast"][name]["subs"] == 10 and data["broadcast"][name]["lost"] == 0
    assert any("agents" in k for k in data["scale"]) and any("stored tasks" in k for k in data["scale"])
    zs, raw = (data["presence"][k] for k in sorted(data["presence"], reverse=True))  # zmesh, then raw
    for r in (zs, raw):
        assert r["lost"] == 0 and r["sent"] > 0 and r["latency_us"]["count"] == r["sent"]
    assert any(t["name"].startswith("state change -> coordinator callback p95") for t in data["targets"])
    st = data["status_time"]
    assert st["agents"] >= 100 and all(st[op]["p50"] <= st[op]["p95"] for op in ("status", "agent_list", "snapshot"))
    assert all({"name", "measured", "goal", "met"} <= set(t) for t in data["targets"])
    push = data["messages"]["push"]  # issue 15: push next to raw ROUTER -> DEALER and a raw relay, in one run
    assert {k.split(":")[0] for k in push} == {"zmesh(none)", "zmesh(full)", "raw-zmq", "raw-zmq relay"}
    for r in push.values():
        assert r["lost"] == 0 and r["latency_us"]["count"] == r["sent"] > 0
    flood = data["messages"]["flood"]
    assert flood["flood_finished"] and set(flood["priorities"]) == {"critical", "high", "normal", "low"}
    for p, r in flood["priorities"].items():
        assert r["got"] == r["sent"] > 0 and r["latency_us"]["count"] == r["got"], p
    assert flood["claims_quiet"]["claims"] > 0 and flood["claims_flood"]["claims"] > 0
    names = [t["name"] for t in data["targets"]]
    assert any(n.startswith("critical delivery p95 while") for n in names)
    assert any(n.startswith("claim p95 during the flood") for n in names)
    assert any(n.startswith("push p95: zmesh(none) / raw two-hop relay") for n in names)
    for key in ("claim-full", "claim-fast", "thr16-full", "broadcast", "push", "agents", "store"):
        pair = data["paired"][key]  # measured in alternation: A B, then B A
        assert [r["first"] for r in pair["rounds"]] == ["a", "b"]
        assert all(r["a"] > 0 and r["b"] > 0 and r["ratio"] == round(r["a"] / r["b"], 3) for r in pair["rounds"])
        assert pair["median"] is not None and isinstance(pair["met"], bool)
        verdict = next(t for t in data["targets"] if t["name"] == pair["title"])
        assert verdict["met"] == pair["met"] and "alternating rounds" in verdict["measured"]
    agentic = data["agentic"]  # issue 16: reservations and waking an MCP agent
    r = agentic["reserve"]["zmesh(full)"]
    assert r["latency_us"]["count"] == r["ops"] > 0
    race = agentic["race"]["zmesh(full)"]
    assert race["procs"] == 8 and race["exactly_one"] == race["rounds"] > 0 and race["grants"] == {"1": race["rounds"]}
    wakes = {k.split(" -> ")[0] for k in agentic["wake"] if k.startswith("zmesh")}
    assert wakes == {"zmesh(full): task created", "zmesh(full): message sent"}
    for k, w in agentic["wake"].items():
        assert w["latency_us"]["count"] == w["n"] > 0, k
    assert "mcp-agent-mail" in agentic["race"] or "mcp-agent-mail" in data["skipped"]
    for peer, why in data["skipped"].items():  # a missing peer is reported, with its reason
        assert why, peer
    rc = data["recovery"]  # the journal's recovery, rebuilt and replayed (bench/recovery.py)
    assert rc["records"] == rc["rebuild"]["replayed"] == rc["rebuild"]["tasks"] == 20_000
    assert any(n.startswith("recovery of a 20,000-record journal") for n in names)
    md = (out / "RESULTS.md").read_text()
    for heading in ("## Targets", "## Journal recovery", "## Targets measured in alternation", "## Claim latency", "## Contended claims", "## Throughput", "## Broadcast", "## Scale",
                    "## State change -> coordinator", "## Reading the mesh", "## Push to a live agent",
                    "## Delivery per priority", "## Path reservations", "## 8 agents race", "## Waking an idle MCP agent"):
        assert heading in md
    assert "durability" in md and data["command"] in md
    png = (out / "latency.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_ab_runs_two_trees_brokers_in_alternation() -> None:
    """bench.ab (what ANALYSIS.md quotes as "paired against" a commit): here both sides run
    this tree, so the command and its output are exercised without a second checkout."""
    proc = subprocess.run([sys.executable, "-m", "bench.ab", str(ROOT), str(ROOT), "--rounds", "2", "--pairs", "bc"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[0]
    assert line.startswith("broadcast p95 A / B: median ") and line.count("=") == 2, line



def test_phases_splits_the_broker_threads_cpu_by_phase(tmp_path: Path) -> None:
    """bench.phases (what ANALYSIS.md quotes for the main thread's CPU by phase): a real
    broker in a thread, real clients; the phases are inside the thread's whole CPU, the
    core's work and the commit inside apply, and a claim costs the core while a hello
    (the broker's own answer) does not."""
    from bench import phases

    claim = phases.measure("claim", 2, 200, tmp_path)
    hello = phases.measure("hello", 1, 200, tmp_path)
    for row in (claim, hello):
        inner = row["poll"] + row["drain"] + row["decode"] + row["apply"] + row["settle"]
        assert 0 < inner <= row["main thread, all"], row
        assert row["handle"] + row["commit"] <= row["apply"] + 0.2, row
    assert claim["handle"] > 0 and claim["commit"] > 0, claim
    assert hello["handle"] == 0, hello


def test_journal_recovery_replays_every_record_and_counts_them(tmp_path: Path) -> None:
    """bench.recovery with a small journal: the rebuild after an "OS crash" replays every
    record, the trusted open after a "broker crash" none, and both find every task."""
    from bench import recovery

    n = 2000
    r = recovery.measure(n, tmp_path)
    assert r["records"] == n and r["durability"] == "none" and r["checkpoint_bytes"] == 1 << 62
    assert 600 < r["bytes_per_record"] < 1200 and abs(r["journal_bytes"] / n - r["bytes_per_record"]) <= 0.05
    assert r["segments"] >= 1 and r["segment_bytes"] >= r["journal_bytes"]
    for rb in (r["rebuild"], r["rebuild_warm"]):
        assert rb["replayed"] == n and rb["trusted"] is False and rb["rebuilt"].startswith("rebuilt from snapshot/")
        assert rb["tasks"] == rb["claims"] == rb["audit"] == rb["events"] == n
        assert rb["seconds"] > 0 and rb["store_seconds"] > 0 and rb["records_per_s"] > 0 and rb["mb_per_s"] > 0
    tr = r["trusted"]
    assert tr["trusted"] is True and tr["replayed"] == 0 and tr["tasks"] == tr["claims"] == n and tr["seconds"] > 0
    assert list(tmp_path.iterdir()) == []  # its temp dir is gone
    line = recovery.summary(r)
    assert line.startswith(f"journal recovery: {n:,} records") and "trusted open" in line


def test_journal_recovery_records_have_a_real_claims_shape(tmp_path: Path) -> None:
    """The records written are the captured claims' change sets: the same tables, key and
    value sizes, each with a task id of its own."""
    from bench import recovery
    from zmesh.store import LmdbStore, redo
    from zmesh.store.journal import Journal

    templates = recovery.capture(tmp_path)
    store = LmdbStore(tmp_path / "data", durability="none")
    try:
        recovery.write_records(store, recovery.plan(templates), 2 * len(templates), event_log=100_000,
                               audit_keep=1_000_000)
    finally:
        store.close()
    records = list(Journal(str(tmp_path / "data" / "journal")).recover())
    assert [seq for seq, _ in records] == list(range(1, 2 * len(templates) + 1))
    for seq, payload in records:
        changes = redo.parse(payload)
        got = sorted((*recovery._split(key), None if value is None else len(value)) for key, value in changes)
        template = templates[(seq - 1) % len(templates)]  # its trims apply only in a full log: not here
        want = sorted((table, key, len(value)) for table, key, value in template if value is not None)
        assert [(t, len(k), v) for t, k, v in got] == [(t, len(k), v) for t, k, v in want], seq
        tid = (recovery._TASK_ID % (seq - 1)).encode()
        assert sorted(k for t, k, _ in got if t == "tasks") == [tid, tid + b"\0"]


def test_journal_recovery_fails_when_a_record_is_lost(tmp_path: Path) -> None:
    """The measurement can fail: a journal with a corrupt record in the middle is replayed
    up to it only, and the check refuses the recovery, saying so."""
    import os
    import struct

    from bench import recovery
    from zmesh.store.checkpoints import BOOT_FILE

    n = 500
    steps = recovery.plan(recovery.capture(tmp_path))
    path = str(tmp_path / "data")
    recovery._run("build", path=path, n=n, steps_list=steps, event_log=100_000, audit_keep=1_000_000)
    journal = os.path.join(path, "journal")
    first = os.path.join(journal, sorted(e for e in os.listdir(journal) if e.endswith(".wal"))[0])
    with open(first, "r+b") as f:  # flip a byte of record 251's payload: its CRC no longer matches
        at = 32
        for _ in range(250):
            f.seek(at)
            at += 16 + struct.unpack("<I", f.read(4))[0]
        f.seek(at + 16 + 10)
        byte = f.read(1)
        f.seek(at + 16 + 10)
        f.write(bytes([byte[0] ^ 0xFF]))
    with open(os.path.join(path, BOOT_FILE), "w") as f:
        f.write(recovery.FOREIGN_BOOT + "\n")
    with pytest.raises(RuntimeError, match=r"500 record\(s\) replayed, got .*'replayed': 250"):
        recovery._run("open", path=path, n=n, expect="rebuild", last_task=recovery.expected_task(steps, n - 1),
                      events_kept=n, audits=n)
