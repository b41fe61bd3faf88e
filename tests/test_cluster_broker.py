"""A broker whose store is the mesh's log on a real 3-member etcd cluster (loopback, free
ports, tmp dirs; every process stopped by PID): what it acknowledges is in etcd's log (the
log replayed into an empty store holds every acknowledged claim with its token), one broker
is active per mesh, a deposed broker stops without acknowledging more, a clean stop hands
the mesh over to the next broker (which rebuilds its replica from the log), and claims go on
across the death of etcd's leader."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import orjson
import pytest

from zmesh import Client
from zmesh.core.schema import PREFIXES, task_key
from zmesh.store import LmdbStore, redo
from zmesh.testing import BrokerProcess, EtcdCluster

from .conftest import wait_for

pytest.importorskip("pyetcd", reason="the etcd extra is not installed (pip install '.[etcd]')")

from zmesh.store.etcd_kv import EtcdKV, parse_endpoints  # noqa: E402
from zmesh.store.etcd_log import EtcdLog  # noqa: E402

TASKS = PREFIXES["tasks"]

pytestmark = pytest.mark.slow  # the cluster fixture (conftest.py) skips without etcd


@pytest.fixture
def mesh() -> str:
    return "t" + uuid.uuid4().hex[:10]


def _broker(tmp_path: Path, cluster: EtcdCluster, mesh: str, name: str = "b1", ttl: int = 3) -> BrokerProcess:
    return BrokerProcess(tmp_path / name, "full", ("--store", cluster.store_url, "--mesh", mesh,
                                                    "--leader-ttl", str(ttl)))


def _entries(cluster: EtcdCluster, mesh: str) -> list[tuple[int, bytes]]:
    kv = EtcdKV(parse_endpoints(cluster.store_url), timeout=3.0)
    try:
        entries = [(e.seq, e.record) for e in EtcdLog(kv, mesh).entries(0)]
    finally:
        kv.close()
    assert [seq for seq, _ in entries] == list(range(1, len(entries) + 1)), "seqs are contiguous from 1"
    return entries


def _granted(entries: list[tuple[int, bytes]]) -> dict[str, list[int]]:
    """task -> the fencing tokens of every claim record the log ever wrote for it."""
    out: dict[str, list[int]] = {}
    for _, record in entries:
        for key, value in redo.parse(record):
            if key[:1] == TASKS and key.endswith(b"\x00") and value is not None:
                claim = orjson.loads(value)
                out.setdefault(key[1:-1].decode(), []).append(claim["token"])
    return out


def _replayed(entries: list[tuple[int, bytes]], where: Path) -> LmdbStore:
    """The log applied to an empty store: what etcd holds, as state."""
    store = LmdbStore(where, durability="none")
    store.apply_records(entries)
    return store


def test_every_acknowledged_claim_is_in_etcds_log(tmp_path: Path, cluster: EtcdCluster, mesh: str) -> None:
    b = _broker(tmp_path, cluster, mesh).start()
    try:
        with Client(b.endpoint, agent="w1", ttl=30) as c:
            for i in range(40):
                c.create_task(f"t{i}")
            claims = {f"t{i}": c.claim(f"t{i}") for i in range(40)}
            tasks = {t: c.task(t) for t in claims}
    finally:
        assert b.stop() == 0, b.log()[-3000:]
    entries = _entries(cluster, mesh)
    granted = _granted(entries)
    for task, claim in claims.items():
        assert claim is not None and granted.get(task) == [claim.token], (task, granted.get(task))
    store = _replayed(entries, tmp_path / "replay")  # the log as state: the client's close released them
    try:
        with store.read() as txn:
            for task, seen in tasks.items():
                assert seen["status"] == "claimed"
                assert orjson.loads(txn.get("tasks", task_key(task)) or b"{}")["status"] == "available", task
    finally:
        store.close()


def test_one_broker_is_active_per_mesh(tmp_path: Path, cluster: EtcdCluster, mesh: str) -> None:
    first = _broker(tmp_path, cluster, mesh).start()
    try:
        kv = EtcdKV(parse_endpoints(cluster.store_url), timeout=3.0)
        try:  # the leader key names the active broker and where it serves
            found = EtcdLog(kv, mesh).leader()
        finally:
            kv.close()
        assert found is not None
        with Client(first.endpoint) as c:
            hello = c.hello()
        leader = orjson.loads(found[1])
        assert leader["broker_id"] == hello["broker_id"] and leader["endpoints"] == hello["endpoints"], leader
        assert leader["pub"] == hello["pub"] and leader["pid"] == first.pid
        second = _broker(tmp_path, cluster, mesh, "b2")
        with pytest.raises(RuntimeError, match="another broker .* is active for mesh"):
            second.start(timeout=20)
    finally:
        first.stop()


def test_a_clean_stop_hands_the_mesh_to_the_next_broker_which_rebuilds_from_the_log(
        tmp_path: Path, cluster: EtcdCluster, mesh: str) -> None:
    first = _broker(tmp_path, cluster, mesh).start()
    holder = Client(first.endpoint, agent="w1", ttl=30, timeout=1.0).connect()
    try:
        holder.create_task("handed")
        assert holder.claim("handed") is not None
    finally:
        assert first.stop() == 0  # w1 still holds its claim: it never said goodbye
        holder.close()
    second = _broker(tmp_path, cluster, mesh, "b2").start()  # resigned: no wait for the lease
    try:
        assert "entries applied from the log" in second.log() and " 0 entries applied" not in second.log(), \
            second.log()
        with Client(second.endpoint, agent="w2", ttl=30) as c:
            task = c.task("handed")
            assert task["status"] == "claimed" and task["owner"] == "w1"
            assert c.claim("handed") is None  # w1 holds it on the new broker too
    finally:
        assert second.stop() == 0


def test_a_deposed_broker_stops_and_acknowledges_nothing_more(tmp_path: Path, cluster: EtcdCluster,
                                                             mesh: str) -> None:
    b = _broker(tmp_path, cluster, mesh, ttl=3).start()
    kv = EtcdKV(parse_endpoints(cluster.store_url), timeout=3.0)
    try:
        with Client(b.endpoint, agent="w1", ttl=30, timeout=2.0) as c:
            c.create_task("before")
            assert c.claim("before") is not None
            elog = EtcdLog(kv, mesh)
            before = elog.head()
            found = kv.get(elog.leader_key)
            assert found is not None
            kv.revoke(found.lease)  # the term ends under the broker (as a stall past its TTL would)
            assert elog.campaign(b"usurper", 10) is not None
            wait_for(lambda: b.proc is not None and b.proc.poll() is not None, timeout=15,
                     what="the deposed broker to stop")
        assert b.proc is not None and b.proc.returncode != 0
        assert "term is over" in b.log() or "is gone" in b.log(), b.log()[-3000:]
        assert "store: store:" not in b.log()  # the reason once, not wrapped in its own code again
        assert elog.head() == before  # nothing appended after the deposition (the close's unregister neither)
    finally:
        kv.close()
        b.stop()
        b.kill()


def test_claims_go_on_across_the_death_of_etcds_leader(tmp_path: Path, cluster: EtcdCluster, mesh: str) -> None:
    b = _broker(tmp_path, cluster, mesh, ttl=5).start()
    leader = cluster.leader()
    assert leader is not None
    claims = {}
    try:
        with Client(b.endpoint, agent="w1", ttl=60, timeout=10.0) as c:
            for i in range(60):
                c.create_task(f"k{i}")
            for i in range(60):
                if i == 20:
                    cluster.kill(leader)
                claims[f"k{i}"] = c.claim(f"k{i}")
        assert all(v is not None for v in claims.values())
    finally:
        assert b.stop() == 0, b.log()[-3000:]
        if not cluster.members[leader].running():
            cluster.restart(leader)
    granted = _granted(_entries(cluster, mesh))
    for task, claim in claims.items():
        assert claim is not None and granted.get(task) == [claim.token], (task, granted.get(task))


def test_a_paused_broker_is_deposed_and_refused_when_it_resumes(tmp_path: Path, cluster: EtcdCluster,
                                                                mesh: str) -> None:
    """SIGSTOP past the leader TTL: another broker takes the mesh; the old one, resumed, finds
    its lease gone (an append of its would be refused by the epoch compare) and stops."""
    old = _broker(tmp_path, cluster, mesh, ttl=2).start()
    kv = EtcdKV(parse_endpoints(cluster.store_url), timeout=3.0)
    try:
        with Client(old.endpoint, agent="w1", ttl=60, timeout=2.0) as c:
            c.create_task("p")
        assert old.proc is not None
        old.proc.send_signal(signal.SIGSTOP)
        elog = EtcdLog(kv, mesh)
        wait_for(lambda: elog.leader() is None, timeout=15, what="the paused broker's lease to lapse")
        new = _broker(tmp_path, cluster, mesh, "b2", ttl=5).start()
        try:
            with Client(new.endpoint, agent="w2", ttl=60) as c:
                assert c.claim("p") is not None
                old.proc.send_signal(signal.SIGCONT)
                wait_for(lambda: old.proc is not None and old.proc.poll() is not None, timeout=15,
                         what="the resumed broker to stop")
                assert old.proc.returncode != 0
                assert "term is over" in old.log() or "is gone" in old.log(), old.log()[-3000:]
                assert "store: store:" not in old.log()
                assert c.task("p")["owner"] == "w2"
        finally:
            assert new.stop() == 0
    finally:
        kv.close()
        if old.proc is not None and old.proc.poll() is None:
            old.proc.send_signal(signal.SIGCONT)
        old.stop()
        old.kill()


def test_a_broker_whose_etcd_does_not_answer_exits_in_one_line(tmp_path: Path) -> None:
    """No etcd at the store's address: the broker does not start, and says so in one line
    naming the address, within the etcd deadline (no traceback, no hang)."""
    import subprocess
    import sys
    import time

    from zmesh.testing import free_port

    port = free_port()  # nothing listens there
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "zmesh", "broker", "--data", str(tmp_path / "d"),
                           "--store", f"etcd://127.0.0.1:{port}", "--bind", f"tcp://127.0.0.1:{free_port()}",
                           "--pub-bind", f"tcp://127.0.0.1:{free_port()}", "--no-discovery"],
                          capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("zmesh: ")]
    assert len(errors) == 1 and f"etcd at 127.0.0.1:{port}" in errors[0] and "did not answer" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "store: store:" not in proc.stderr
    assert took < 30, took


@pytest.mark.parametrize("ttl", [0, 1, -5, 61, 2.5, True, float("nan"), "5"])
def test_the_python_api_refuses_a_bad_leader_ttl_naming_it(tmp_path: Path, ttl: object) -> None:
    from zmesh.errors import StoreError
    from zmesh.store.replicated import ReplicatedStore

    with pytest.raises(StoreError, match="leader_ttl must be a whole number of seconds in 2..60"):
        ReplicatedStore(tmp_path / "d", endpoints=[("127.0.0.1", 1)], mesh="m", leader_ttl=ttl)  # type: ignore[arg-type]
    assert not (tmp_path / "d").exists()  # refused before anything is opened
