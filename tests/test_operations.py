"""Issue 18, running the broker for real: `zmesh config show`, JSON logs, sd_notify readiness,
graceful drain on SIGTERM under load, `zmesh backup` while it serves and `zmesh restore`, and
the systemd unit.

Every broker here is a real process (zmesh.testing.BrokerProcess, loopback, free ports,
temporary data) stopped by PID; loads are real clients in threads."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from zmesh import Client
from zmesh.broker.jobs import Backups
from zmesh.config import SETTINGS, BrokerConfig
from zmesh.errors import BadRequest, Conflict, ZmeshError
from zmesh.testing import BrokerProcess

from .conftest import wait_for
from .test_cli import Cli, clean_env, run

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "conf" / "zmesh-broker.service"


# --------------------------------------------------------------------------- load


class Load:
    """Agents creating and claiming tasks as fast as the broker answers, each in a thread of
    its own; what the broker acknowledged is recorded when the reply arrives, so a snapshot
    taken at time T holds only writes acknowledged before T."""

    def __init__(self, endpoint: str, agents: int = 4) -> None:
        self.endpoint = endpoint
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.created: list[str] = []
        self.claimed: dict[str, tuple[str, int]] = {}  # task -> (agent, token)
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(f"a{i}",), daemon=True) for i in range(agents)]

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads), "a load thread did not stop"

    def _run(self, agent: str) -> None:
        n = 0
        try:
            with Client(self.endpoint, agent=agent, timeout=3.0, ttl=120.0) as c:
                while not self.stop.is_set():
                    task = f"{agent}-{n}"
                    n += 1
                    c.create_task(task)
                    with self.lock:
                        self.created.append(task)
                    claim = c.claim(task)
                    with self.lock:
                        self.claimed[task] = (agent, claim.token)
        except ZmeshError as exc:  # the broker went away (the SIGTERM test): the load ends
            if not self.stop.is_set():
                self.errors.append(exc)

    def snapshot(self) -> tuple[list[str], dict[str, tuple[str, int]]]:
        with self.lock:
            return list(self.created), dict(self.claimed)

    def wait_for_claims(self, n: int) -> None:
        wait_for(lambda: len(self.claimed) >= n or self.errors, 60, what=f"{n} acknowledged claims")
        assert not self.errors, self.errors


def assert_kept(endpoint: str, created: list[str], claimed: dict[str, tuple[str, int]]) -> None:
    """Every acknowledged task is there, and every acknowledged claim is held by its agent
    with its fencing token."""
    with Client(endpoint, timeout=10.0) as c:
        tasks: dict[str, Any] = {}
        after = ""
        while True:
            page = c.task_page(after=after, limit=1000)
            tasks.update((t["id"], t) for t in page["tasks"])
            if not page["more"]:
                break
            after = page["tasks"][-1]["id"]
    missing = [t for t in created if t not in tasks]
    assert not missing, f"{len(missing)} acknowledged task(s) lost: {missing[:5]}"
    wrong = {t: (tasks[t]["status"], tasks[t].get("owner"), tasks[t].get("token"), want)
             for t, want in claimed.items()
             if (tasks[t]["status"], tasks[t].get("owner"), tasks[t].get("token")) != ("claimed", *want)}
    assert not wrong, f"{len(wrong)} acknowledged claim(s) not held: {list(wrong.items())[:5]}"


# --------------------------------------------------------------------------- config show


def test_config_show_names_every_source_and_round_trips(tmp_path: Path) -> None:
    conf = tmp_path / "z.toml"
    conf.write_text('[broker]\ndefault_ttl = 12.5\nmesh = "lab"\n')
    env = clean_env(ZMESH_CONFIG=str(conf), ZMESH_MESH="prod", ZMESH_DATA=str(tmp_path / "d"))
    r = run("config", "show", env=env)
    assert r.returncode == 0, r.stderr
    lines = {line.split(" = ")[0].lstrip("# "): line for line in r.stdout.splitlines() if " = " in line}
    assert set(lines) == {s.name for s in SETTINGS}, "every setting is shown once"
    assert lines["default_ttl"].endswith(f"# file {conf}")
    assert '"prod"' in lines["mesh"] and lines["mesh"].endswith("# env ZMESH_MESH"), "env ranks above the file"
    assert lines["durability"].endswith("# default")
    saved = tmp_path / "shown.toml"
    saved.write_text(r.stdout)
    want = BrokerConfig.load(str(conf), env={"ZMESH_MESH": "prod", "ZMESH_DATA": str(tmp_path / "d")})
    assert BrokerConfig.load(str(saved), env={}) == want, "the text output is a config file of the same values"
    shown = json.loads(run("config", "show", "--json", env=env).stdout)
    assert shown["config"]["default_ttl"] == 12.5 and shown["sources"]["mesh"] == "env ZMESH_MESH"
    assert shown["file"] == str(conf) and set(shown["sources"]) == {s.name for s in SETTINGS}


def test_config_show_refuses_what_the_broker_would(tmp_path: Path) -> None:
    conf = tmp_path / "z.toml"
    conf.write_text("[broker]\ndefault_tll = 3\n")
    r = run("config", "show", "--config", str(conf))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "unknown key [broker] default_tll (did you mean default_ttl?)" in r.stderr
    r = run("config", "show", env=clean_env(ZMESH_DRAIN_TIMEOUT="forever"))
    assert r.returncode == 2 and "ZMESH_DRAIN_TIMEOUT='forever'" in r.stderr


# --------------------------------------------------------------------------- logs, readiness


def test_json_log_has_one_object_per_line_with_named_events(tmp_path: Path) -> None:
    b = BrokerProcess(tmp_path / "data", extra=("--log-format", "json")).start()
    try:
        with Client(b.endpoint, timeout=5.0) as c:
            c.status()
        bad = socket.create_connection(("127.0.0.1", b.port))  # a peer speaking something else
        bad.sendall(b"GET / HTTP/1.0\r\n\r\n")
        bad.close()
    finally:
        assert b.stop() == 0
    records = [json.loads(line) for line in b.log().splitlines() if line.strip()]
    assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    events = {r.get("event"): r for r in records}
    ready = events["broker.ready"]
    assert ready["pid"] == b.pid and ready["router"][0] == b.endpoint and ready["durability"] == "full"
    assert {"broker.recovered", "broker.drained", "broker.stopped"} <= set(events)
    assert [r["event"] for r in records if "event" in r][-1] == "broker.stopped"


def test_sd_notify_ready_then_stopping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    b = BrokerProcess(tmp_path / "data").start()
    try:
        first = sock.recv(4096).decode().splitlines()
        assert "READY=1" in first and f"MAINPID={b.pid}" in first
        with Client(b.endpoint, timeout=5.0) as c:  # READY came when it serves: it answers
            assert c.status()["pid"] == b.pid
    finally:
        assert b.stop() == 0
        sock.settimeout(5)
        assert "STOPPING=1" in sock.recv(4096).decode().splitlines()
        sock.close()


# --------------------------------------------------------------------------- drain


def test_sigterm_under_load_keeps_every_acknowledged_write_and_exits_within_its_bound(tmp_path: Path) -> None:
    drain = 3.0
    b = BrokerProcess(tmp_path / "data", extra=("--drain-timeout", str(drain))).start()
    try:
        with Load(b.endpoint) as load:
            load.wait_for_claims(200)
            sent = time.monotonic()
            assert b.proc is not None
            b.proc.send_signal(15)
            code = b.proc.wait(drain + 10)
            took = time.monotonic() - sent
            load.stop.set()
        created, claimed = load.snapshot()
    finally:
        b.kill()
    assert code == 0, b.log()[-2000:]
    # the bound: the drain, the routers' linger (0.5 s) and writing the claim index
    assert took < drain + 2.0, f"exit took {took:.2f} s, bound {drain + 2.0} s"
    assert "drained in" in b.log() and "zmesh broker stopped" in b.log()
    again = BrokerProcess(tmp_path / "data").start()
    try:
        assert "claims read from the clean-shutdown index" in again.log(), "the drain wrote the claim index"
        assert_kept(again.endpoint, created, claimed)
    finally:
        assert again.stop() == 0


def test_sigterm_answers_every_request_already_received(tmp_path: Path) -> None:
    """Four connections each send 900 creates at once (under the per-connection queue of
    1,000) and the broker is told to stop right after: every one is answered ok and kept."""
    from zmesh import protocol

    from .test_limits import dealer, request

    b = BrokerProcess(tmp_path / "data", extra=("--drain-timeout", "20")).start()
    socks = [dealer(b.endpoint) for _ in range(4)]
    try:
        for i, sock in enumerate(socks):
            for n in range(900):
                sock.send_multipart(request(n, "task_create", {"id": f"c{i}-{n}"}))
        assert b.proc is not None
        b.proc.send_signal(15)
        for sock in socks:
            for _ in range(900):
                assert sock.poll(30_000), "a request the broker had was not answered"
                reply = protocol.decode_reply(sock.recv_multipart())
                assert reply.ok, reply.body
        assert b.proc.wait(30) == 0
    finally:
        for sock in socks:
            sock.close(0)
        b.kill()
    print(b.log().splitlines()[-2])
    again = BrokerProcess(tmp_path / "data").start()
    try:
        assert_kept(again.endpoint, [f"c{i}-{n}" for i in range(4) for n in range(900)], {})
    finally:
        assert again.stop() == 0


# --------------------------------------------------------------------------- backup and restore


def test_backup_during_a_claim_load_restores_every_acknowledged_task_and_claim(tmp_path: Path) -> None:
    b = BrokerProcess(tmp_path / "data").start()
    dest = tmp_path / "backups" / "one"
    (tmp_path / "backups").mkdir()
    try:
        with Load(b.endpoint) as load:
            load.wait_for_claims(100)
            created, claimed = load.snapshot()  # acknowledged before the backup began
            out = Cli(b.endpoint).json("backup", str(dest), "--json")
            after = len(load.snapshot()[1])
        assert after > len(claimed), "the load went on while the copy was made"
        assert out["dest"] == str(dest) and out["bytes"] == (dest / "data.mdb").stat().st_size > 0
        assert os.stat(dest).st_mode & 0o777 == 0o700
        broker_id = out["broker_id"]
    finally:
        assert b.stop() == 0
    restored = json.loads(run("restore", str(dest), "--data", str(tmp_path / "new"), "--json").stdout)
    assert restored["broker_id"] == broker_id and restored["tasks"]["claimed"] >= len(claimed)
    b2 = BrokerProcess(tmp_path / "new").start()
    try:
        assert_kept(b2.endpoint, created, claimed)
    finally:
        assert b2.stop() == 0


def test_backup_refuses_a_bad_destination(broker: BrokerProcess, tmp_path: Path) -> None:
    z = Cli(broker.endpoint)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    z.fails(2, "backup", str(full), match="is not empty")
    z.fails(2, "backup", str(tmp_path / "no" / "such" / "dir"), match="parent directory does not exist")
    with Client(broker.endpoint, timeout=5.0) as c:
        with pytest.raises(BadRequest, match="not an absolute path"):
            c.backup("relative/dir")
        for bad in (f"{tmp_path}/a\x00b", f"{tmp_path}/a\nb", "/" + "x" * 5000):  # all taken before (NUL, too long: internal)
            with pytest.raises(BadRequest, match="is not a path: no control characters"):
                c.backup(bad)
    z.ok("backup", str(tmp_path / "ok"))
    assert (tmp_path / "ok" / "data.mdb").exists()


def test_restore_refuses_a_running_broker_and_existing_data(broker: BrokerProcess, tmp_path: Path) -> None:
    z = Cli(broker.endpoint)
    with Client(broker.endpoint, timeout=5.0) as c:
        c.create_task("t1")
    z.ok("backup", str(tmp_path / "bk"))
    r = run("restore", str(tmp_path / "bk"), "--data", str(broker.data))
    assert r.returncode == 1 and "in use by a running broker" in r.stderr, r.stderr
    r = run("restore", str(tmp_path), "--data", str(tmp_path / "x"))
    assert r.returncode == 2 and "not a backup made by `zmesh backup`" in r.stderr, r.stderr
    target = tmp_path / "target"
    assert run("restore", str(tmp_path / "bk"), "--data", str(target)).returncode == 0
    r = run("restore", str(tmp_path / "bk"), "--data", str(target))
    assert r.returncode == 1 and "--force" in r.stderr
    r = run("restore", str(tmp_path / "bk"), "--data", str(target), "--force", "--json")
    kept = json.loads(r.stdout)["kept"]
    assert kept and Path(kept).exists() and (target / "data.mdb").exists()


class _SlowStore:
    """A store whose copy waits until the test lets it finish."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.copies: list[str] = []

    def backup(self, dest: str) -> None:
        self.copies.append(dest)
        assert self.go.wait(20)
        Path(dest, "data.mdb").write_bytes(b"x" * 10)


class _Item:
    def __init__(self, req_id: bytes, ident: bytes) -> None:
        self.router, self.ident = "router", ident
        self.req = type("Req", (), {"req_id": req_id})()


def test_one_backup_at_a_time_and_a_retry_joins_the_running_one(tmp_path: Path) -> None:
    store = _SlowStore()
    woken = threading.Event()
    backups = Backups(store, "b1", woken.set)  # type: ignore[arg-type]
    first = _Item(b"r1", b"client-1")
    backups.extend(None, {"dest": str(tmp_path / "a"), "seq": 7}, first)  # type: ignore[arg-type]
    backups.extend(None, {"dest": str(tmp_path / "a"), "seq": 7}, _Item(b"r1", b"client-1b"))  # type: ignore[arg-type]
    with pytest.raises(Conflict, match="a backup to .* is running"):
        backups.extend(None, {"dest": str(tmp_path / "b"), "seq": 8}, _Item(b"r2", b"client-2"))  # type: ignore[arg-type]
    wait_for(lambda: store.copies, what="the copy started")
    assert backups.replies() == [] and store.copies == [str(tmp_path / "a")], "one copy, still running"
    store.go.set()
    assert woken.wait(20)
    replies = backups.replies()
    assert [frames[0] for _, frames in replies] == [b"client-1", b"client-1b"], "both asks of r1 are answered"
    backups.extend(None, {"dest": str(tmp_path / "b"), "seq": 8}, _Item(b"r2", b"client-2"))  # type: ignore[arg-type]
    backups.wait()


# --------------------------------------------------------------------------- the service unit


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (Debian package systemd)")
    text = UNIT.read_text()
    assert "Type=notify" in text and "Restart=on-failure" in text and "User=zmesh" in text
    stop = float(next(line for line in text.splitlines() if line.startswith("TimeoutStopSec="))[15:])
    assert stop > BrokerConfig.load(env={}).drain_timeout + 5, "systemd waits longer than the drain"
    # the unit names /opt/zmesh/bin/zmesh; verify checks that ExecStart exists, so point it at ours
    zmesh = Path(sys.executable).with_name("zmesh")
    unit = tmp_path / "zmesh-broker.service"
    unit.write_text(text.replace("/opt/zmesh/bin/zmesh", str(zmesh)))
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_expiry_lines_carry_their_events_and_a_storm_is_one_summary(caplog: pytest.LogCaptureFixture) -> None:
    from zmesh.util.logs import JsonFormatter
    from zmesh.broker.log import EXPIRY_LINES_PER_PASS, log_expiries
    from zmesh.protocol import Event

    events = [Event("agent.expired", i, {"agent": f"a{i}", "released": [f"t{i}"]}) for i in range(25)]
    events.append(Event("task.released", 26, {"task_id": "t9", "agent": "b", "reason": "claim_expired"}))
    with caplog.at_level("INFO", logger="zmesh.broker"):
        log_expiries(events)
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    assert len(lines) == EXPIRY_LINES_PER_PASS + 1
    assert lines[0]["event"] == "lease.expired" and lines[0]["agent"] == "a0" and lines[0]["released"] == 1
    storm = lines[-1]
    assert storm["level"] == "WARNING" and storm["event"] == "expiry.storm"
    assert (storm["leases"], storm["claims"], storm["evasive"]) == (25, 1, 0)
    assert "6 not logged one by one" in storm["msg"]


def test_json_formatter_keeps_one_line_whatever_the_message_holds() -> None:
    import logging

    from zmesh.util.logs import JsonFormatter

    record = logging.LogRecord("zmesh.x", logging.WARNING, __file__, 1, "bad %s", ("a\nb\x1b",), None)
    record.event, record.peer = "request.refused", object()
    text = JsonFormatter().format(record)
    assert "\n" not in text
    out = json.loads(text)
    assert out["msg"] == "bad a\nb\x1b" and out["event"] == "request.refused" and out["peer"].startswith("<object")


def test_every_logged_event_is_in_the_table_and_the_docs() -> None:
    import re

    from zmesh.broker.log import LOG_EVENTS

    # the broker's modules and what they use (what was the flat top level before the packages)
    code = "".join(p.read_text() for sub in ("broker", "store", "transport", "util", "protocol")
                   for p in (ROOT / "zmesh" / sub).rglob("*.py"))
    used = set(re.findall(r'"event": "([a-z_]+\.[a-z_.]+)"', code))
    assert used == set(LOG_EVENTS), f"logged but not in LOG_EVENTS: {used - set(LOG_EVENTS)}; " \
                                    f"in LOG_EVENTS but never logged: {set(LOG_EVENTS) - used}"
    doc = (ROOT / "docs" / "OPERATIONS.md").read_text()
    assert all(f"`{name}`" in doc for name in LOG_EVENTS), [n for n in LOG_EVENTS if f"`{n}`" not in doc]
