"""The broker loop in-process (a thread), for what needs fault injection: a request that
crashes the core, a full LMDB map, the store's schema and lock, IPC."""

from __future__ import annotations

import os

import threading
from pathlib import Path
from typing import Iterator

import lmdb
import pytest

from zmesh import Client, Internal, StoreError
from zmesh.broker.loop import Broker
from zmesh.config import BrokerConfig
from zmesh.store import SCHEMA_VERSION, UPGRADES_IN_PLACE, LmdbStore
from zmesh.testing import free_port
from .conftest import wait_for


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator:
    running: list[tuple[Broker, threading.Thread]] = []

    def make(**kw) -> Broker:
        cfg = BrokerConfig(data=str(tmp_path / "data"), bind=[f"tcp://127.0.0.1:{free_port()}"],
                           pub_bind=[f"tcp://127.0.0.1:{free_port()}"], discovery=False, **kw)
        b = Broker(cfg)
        b.bind()
        t = threading.Thread(target=b.serve, kwargs={"install_signals": False}, daemon=True)
        t.start()
        running.append((b, t))
        return b

    yield make
    for b, t in running:
        b.stop()
        t.join(10)
        assert not t.is_alive()


def test_a_request_that_crashes_the_core_gets_internal_and_the_broker_goes_on(make_broker) -> None:
    b = make_broker()
    original = b.core._handlers["task_create"]

    def buggy(ctx, body):
        if body["id"] == "boom":
            original(ctx, body)  # writes, then fails: the write must be rolled back
            raise ZeroDivisionError("injected")
        return original(ctx, body)

    b.core._handlers["task_create"] = buggy
    with Client(b.endpoints[0]) as c:
        c.create_task("ok1")
        with pytest.raises(Internal):
            c.create_task("boom")
        c.create_task("ok2")
        ids = [t["id"] for t in c.tasks()]
        assert ids == ["ok1", "ok2"], "the failed request left nothing behind"
        seqs = [e["seq"] for e in c.replay(0)["events"]]
        assert seqs == list(range(1, len(seqs) + 1))


def test_a_full_map_grows_instead_of_failing(make_broker) -> None:
    b = make_broker(map_size=1 << 20)
    with Client(b.endpoints[0], timeout=30) as c:
        for i in range(60):  # 60 x 100 KB: single puts overflow the 1 MB map
            c.create_task(f"t{i}", data={"pad": "x" * 100_000})
        assert c.status()["tasks"]["available"] == 60
    assert b.store.env.info()["map_size"] > 1 << 20


def test_ipc_endpoints_serve_local_clients(make_broker) -> None:
    b = make_broker()
    ipc = [ep for ep in b.endpoints if ep.startswith("ipc://")]
    assert ipc, b.endpoints
    with Client(ipc[0], agent="local") as c:
        c.create_task("t1")
        assert c.claim("t1") is not None
        events = list(c.events(["task."], since=0, timeout=0.5))
        assert [e.topic for e in events][:2] == ["task.created", "task.claimed"]


def test_ipc_sockets_are_the_owners_alone(tmp_path: Path) -> None:
    """IPC endpoints are protected by file permissions: the socket files are 0600 from the
    moment they exist, whatever the process's umask, so another local user cannot connect
    even where it can reach the data directory (here a directory anyone may traverse)."""
    import shutil
    import stat
    import subprocess
    import tempfile

    open_dir = Path(tempfile.mkdtemp(prefix="zmesh-ipc-", dir="/tmp"))
    open_dir.chmod(0o755)
    cfg = BrokerConfig(data=str(open_dir / "data"), bind=[f"tcp://127.0.0.1:{free_port()}"],
                       pub_bind=[f"tcp://127.0.0.1:{free_port()}"], discovery=False)
    b = Broker(cfg)
    permissive = os.umask(0)  # a service started with a careless umask: the broker must not rely on it
    try:
        try:
            b.bind()
        finally:
            os.umask(permissive)
        (open_dir / "data").chmod(0o755)
        paths = [ep[len("ipc://"):] for ep in b.endpoints + b.pub_endpoints if ep.startswith("ipc://")]
        assert len(paths) == 2
        for path in paths:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, oct(os.stat(path).st_mode)
        system_python = "/usr/bin/python3"  # one another user may run (the venv's may sit under /root)
        if os.geteuid() == 0 and os.access(system_python, os.X_OK):  # as another user: the file mode refuses
            probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
                     "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(7)\nsys.exit(0)")
            done = subprocess.run([system_python, "-c", probe, paths[0]], user=65534, capture_output=True,
                                  timeout=30, cwd="/")
            assert done.returncode == 7, done.stderr
    finally:
        b.close()
        shutil.rmtree(open_dir, ignore_errors=True)


def test_newer_schema_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "d", durability="none")
    with store.write() as txn:
        txn.put("meta", b"schema", str(SCHEMA_VERSION + 1).encode())
    store.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade zmesh"):
        LmdbStore(tmp_path / "d")


def _named_database_store(path: Path, version: int, tables: dict[str, dict[bytes, bytes]]) -> None:
    """A data directory as zmesh schema 1-3 wrote it: one named LMDB database per table."""
    env = lmdb.open(str(path), max_dbs=16, subdir=True)
    with env.begin(write=True) as txn:
        for name, records in {"meta": {b"schema": str(version).encode(), b"broker_id": b"b" * 32},
                              **tables}.items():
            db = env.open_db(name.encode(), txn=txn)
            for key, value in records.items():
                txn.put(key, value, db=db)
    env.close()


def test_older_schema_is_refused_not_misread(tmp_path: Path) -> None:
    old = min(UPGRADES_IN_PLACE) - 1
    _named_database_store(tmp_path / "d", old, {"tasks": {b"t": b"{}"}})
    with pytest.raises(StoreError, match=f"schema version {old}.*no\nmigration|no migration"):
        LmdbStore(tmp_path / "d")
    env = lmdb.open(str(tmp_path / "d"), max_dbs=16)  # refused: not a byte changed
    with env.begin() as txn:
        assert txn.get(b"t", db=env.open_db(b"tasks", txn=txn, create=False)) == b"{}"
    env.close()


@pytest.mark.parametrize("version", sorted(UPGRADES_IN_PLACE))
def test_schema_2_and_3_are_upgraded_in_place(tmp_path: Path, make_broker, version: int) -> None:
    """Records move from one named database per table into the one-tree layout, a task's
    claim moves next to its task, and the broker serves the claim as before."""
    import orjson

    task = {"id": "t1", "type": "task", "data": None, "priority": 0, "requires": [], "max_attempts": 3,
            "depends_on": [], "status": "claimed", "attempts": 0, "claims": 1, "created": 1.0,
            "updated": 1.0, "result": None, "history": [], "order": 1}
    claim = {"agent": "a1", "token": 7, "lease": 6, "ttl": None, "since": 1.0}
    agent = {"id": "a1", "capabilities": [], "metadata": {}, "ttl": 30.0, "lease": 6, "registered": 1.0,
             "implicit": False, "completed": 0, "failed": 0}
    _named_database_store(tmp_path / "data", version, {
        "tasks": {b"t1": orjson.dumps(task), b"t2": orjson.dumps(dict(task, id="t2", status="available", claims=0))},
        "claims": {b"task:t1": orjson.dumps(claim)},
        "agents": {b"a1": orjson.dumps(agent)},
        "ready": {b"\0" * 12 + b"t2": b""},
        "events": {b"\xffseq": (3).to_bytes(8, "big"), b"\xfftoken": (7).to_bytes(8, "big"),
                   b"\xffcount:claimed": (1).to_bytes(8, "big"), b"\xffcount:available": (1).to_bytes(8, "big")},
    })
    store = LmdbStore(tmp_path / "data", durability="none")
    with store.read() as txn:
        assert int(txn.get("meta", b"schema")) == SCHEMA_VERSION == 4
        assert txn.get("meta", b"broker_id") == b"b" * 32
    store.close()
    env = lmdb.open(str(tmp_path / "data"), max_dbs=16)
    with env.begin() as txn:  # every key is a table-prefixed record: the named databases are gone
        assert all(0x10 <= k[0] < 0x20 for k, _ in txn.cursor())
    env.close()
    b = make_broker()
    with Client(b.endpoints[0]) as c:
        view = c.task("t1")
        assert (view["status"], view["owner"], view["token"]) == ("claimed", "a1", 7)
        assert [t["id"] for t in c.tasks(status="claimed")] == ["t1"]
        assert [t["id"] for t in c.tasks()] == ["t1", "t2"]
        assert c.status()["claims"] == 1 and c.status()["seq"] == 3
        assert c.claim("t1", agent="other") is None  # still held
        assert c.complete("t1", agent="a1", token=7)["status"] == "completed"
        assert c.claim("t2", agent="other").token == 9  # counters carried over (8: other's lease)


def test_one_broker_per_data_directory(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "d", durability="none")
    try:
        with pytest.raises(StoreError, match="in use by another broker"):
            LmdbStore(tmp_path / "d")
    finally:
        store.close()


@pytest.mark.parametrize("level", ["full", "fast", "none"])
def test_durability_levels_flush_the_journal_not_lmdb(tmp_path: Path, level: str) -> None:
    """LMDB is never synced per commit (the journal is the durability of record); ``full``
    flushes the journal before the write returns, ``fast`` right after (another thread),
    ``none`` not at all until a clean stop."""
    store = LmdbStore(tmp_path / level, durability=level)
    try:
        flags = store.env.flags()
        assert (flags["sync"], flags["metasync"]) == (False, False)
        journal = store.journal
        assert journal is not None
        with store.write() as txn:
            txn.put("tasks", b"t1", b"{}")
        assert store.applied == journal.last_seq
        if level == "full":
            assert journal.synced == store.applied
        elif level == "fast":
            wait_for(lambda: journal.synced == store.applied, what="the flusher's fdatasync")
        else:
            assert journal.synced < store.applied
    finally:
        store.close()
    assert journal.synced == store.applied  # a clean stop flushes
    with pytest.raises(StoreError, match="unknown durability"):
        LmdbStore(tmp_path / "x", durability="sometimes")


def test_unwritable_data_dir_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot use data directory"):
        LmdbStore(blocker / "sub")
    assert lmdb  # the LMDB error never escapes as lmdb.Error


def test_a_retry_gets_the_original_reply_but_a_reused_id_is_not_a_retry(make_broker) -> None:
    import zmq

    from zmesh import protocol

    b = make_broker()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(b.endpoints[0])

    def ask(req_id: bytes, op: str, body: dict) -> protocol.Reply:
        sock.send_multipart(protocol.encode_request(req_id, op, body))
        assert sock.poll(5000)
        return protocol.decode_reply(sock.recv_multipart())

    try:
        assert ask(b"id-1", "task_create", {"id": "t1"}).ok
        first = ask(b"id-2", "claim", {"task": "t1", "agent": "a"})
        again = ask(b"id-2", "claim", {"task": "t1", "agent": "a"})  # a retry
        assert first.ok and again.body == first.body
        # the same id with another request (a client bug or a reused counter) is served anew
        other = ask(b"id-1", "task_create", {"id": "t2"})
        assert other.ok and other.body["id"] == "t2"
        with Client(b.endpoints[0]) as c:
            assert c.task("t2")["status"] == "available"
    finally:
        sock.close(0)


def test_a_clean_shutdown_leaves_a_claim_index_the_next_start_consumes(tmp_path: Path) -> None:
    from zmesh.testing import run_broker

    with run_broker(tmp_path / "data", durability="none") as b, Client(b.endpoint) as c:
        for tid in ("t1", "t2"):
            c.create_task(tid)
        c.claim("t2", agent="a1", ttl=60)
    store = LmdbStore(tmp_path / "data", durability="none")  # stopped by SIGTERM: index written
    with store.read() as txn:
        assert txn.get("meta", b"claim_index") == b"task:t2"
    store.close()
    with run_broker(tmp_path / "data", durability="none") as b, Client(b.endpoint) as c:
        assert [t["id"] for t in c.tasks(status="claimed")] == ["t2"]
        assert c.task("t2")["owner"] == "a1" and c.claim("t2", agent="a2") is None
        c.release("t2", agent="a1")
    store = LmdbStore(tmp_path / "data", durability="none")
    with store.read() as txn:  # consumed by the start, rewritten by the stop: now empty
        assert txn.get("meta", b"claim_index") == b""
    store.close()


def test_an_upgrade_that_outgrows_the_map_grows_it_and_completes(tmp_path: Path) -> None:
    """Schema 3 data is copied into the new layout in one transaction: with a small map the
    copy fills it, the map grows, and the upgrade is applied again, all or nothing."""
    tasks = {b"t%04d" % i: b"x" * 2000 for i in range(400)}  # ~0.8 MB, twice that while copying
    _named_database_store(tmp_path / "d", 3, {"tasks": tasks})
    store = LmdbStore(tmp_path / "d", durability="none", map_size=1 << 20)
    try:
        assert store.env.info()["map_size"] > 1 << 20
        with store.read() as txn:
            assert int(txn.get("meta", b"schema")) == SCHEMA_VERSION
            assert dict((bytes(k), bytes(v)) for k, v in txn.scan("tasks")) == tasks
    finally:
        store.close()


def test_a_stop_before_the_loop_starts_is_not_lost(tmp_path: Path) -> None:
    """A SIGTERM that lands while serve() is starting (its handler in, the loop not yet
    running) used to be forgotten: serve() set the running flag after it, and the broker
    served on until SIGKILL. Found by a test stopping a broker right after its start."""
    cfg = BrokerConfig(data=str(tmp_path / "data"), bind=[f"tcp://127.0.0.1:{free_port()}"],
                       pub_bind=[f"tcp://127.0.0.1:{free_port()}"], discovery=False)
    b = Broker(cfg)
    b.bind()
    b.stop()  # as the signal handler would, before the loop
    t = threading.Thread(target=b.serve, kwargs={"install_signals": False}, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "serve() ignored a stop asked before its loop began"


def test_the_broker_serves_from_the_store_it_is_given(tmp_path: Path) -> None:
    """The store is injected (Broker(config, store=...)): a memory store serves the same claims,
    and nothing is written under the data directory (no LMDB file is made)."""
    from zmesh.store import MemoryStore

    store = MemoryStore()
    cfg = BrokerConfig.load(env={}, data=str(tmp_path / "d"), bind=[f"tcp://127.0.0.1:{free_port()}"],
                            pub_bind=[f"tcp://127.0.0.1:{free_port()}"], ipc=False, discovery=False)
    b = Broker(cfg, store=store)
    assert b.store is store
    loop = threading.Thread(target=b.serve, kwargs={"install_signals": False})
    loop.start()
    try:
        with Client(cfg.bind[0], agent="w") as c:
            c.create_task("t")
            claim = c.claim("t")
            assert claim is not None and claim.token >= 1
            assert c.hello()["broker_id"] == store.broker_id
        with store.read() as txn:  # the claim is in the store the broker was given
            assert txn.get("tasks", b"t") is not None
    finally:
        b.stop()
        loop.join(30)
    assert not loop.is_alive()
    assert not list((tmp_path / "d").glob("*.mdb"))
