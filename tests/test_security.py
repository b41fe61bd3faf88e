"""Issue 17, CurveZMQ: a secure broker admits only the client keys on its allow-list, refuses
the others with a log line naming the peer and the key, and nothing on the wire is
plaintext. Real broker processes, real clients, a TCP relay that records the bytes."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import zmq
from click.testing import CliRunner

import zmesh
from zmesh import Client
from zmesh.cli import main
from zmesh.errors import ConfigError, InvalidArgument, Unreachable
from zmesh.transport.keys import ROLE_DIRS, AllowList, fingerprint, keygen, load_pair, load_public
from zmesh.testing import BrokerProcess, free_port

from .conftest import wait_for

pytestmark = pytest.mark.timeout(120)


class Keys:
    """A broker key pair and client key pairs, laid out as a secure broker expects."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.keys = self.data / "keys"
        self.allowed = self.keys / "authorized"
        self.allowed.mkdir(parents=True)
        self.broker_public, self.broker_secret = keygen(self.keys, "broker")
        self.clients = root / "clients"

    def client(self, name: str, *, allow: bool = True, role: str = "agent") -> Path:
        public, secret = keygen(self.clients, name)
        if allow:
            folder = self.allowed / ROLE_DIRS[role]
            folder.mkdir(exist_ok=True)
            (folder / public.name).write_bytes(public.read_bytes())
        return secret

    def curve(self, secret: Path) -> tuple[tuple[int, object], ...]:
        from zmesh.client._protocol import curve_options

        return curve_options(str(self.broker_public), str(secret))


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


@pytest.fixture
def secure(keys: Keys) -> Iterator[BrokerProcess]:
    ops = keys.client("ops")
    b = BrokerProcess(keys.data, extra=("--secure",))
    b.curve = keys.curve(ops)
    b.start()
    try:
        yield b
    finally:
        b.stop()
        b.kill()


def test_an_allowed_client_works_and_events_come_encrypted(secure: BrokerProcess, keys: Keys) -> None:
    alice = keys.client("alice")
    with Client(secure.endpoint, agent="alice", server_key=str(keys.broker_public), key=str(alice)) as c:
        c.create_task("t1")
        claim = c.claim("t1")
        c.complete("t1", token=claim.token)
        # the PUB socket is CURVE too: a CURVE SUB reads events, a plain one nothing
        ctx = zmq.Context.instance()
        subs = {}
        for name, options in (("curve", keys.curve(alice)), ("plain", ())):
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            for option, value in options:
                sub.setsockopt(option, value)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(secure.pub_endpoint)
            subs[name] = sub
        try:
            wait_for(lambda: (c.create_task(f"t{time.monotonic_ns()}"), subs["curve"].poll(100))[1],
                     what="an event on the CURVE subscriber")
            assert subs["curve"].recv_multipart()[0].startswith(b"task.")
            assert subs["plain"].poll(500) == 0
        finally:
            for sub in subs.values():
                sub.close(0)


def refused(endpoint: str, **curve: str) -> None:
    """A client with these keys (none: plain) gets no answer at all; a secure one is told that
    silence may be a refused key (it read as "the broker is down" alone)."""
    c = Client(endpoint, timeout=1.0, **curve)
    try:
        with pytest.raises(Unreachable) as info:
            c.status()
        assert ("does not admit" in info.value.message) == bool(curve), info.value.message
    finally:
        c.close()


def test_an_unknown_key_gets_nothing_and_the_broker_logs_it(secure: BrokerProcess, keys: Keys) -> None:
    mallory = keys.client("mallory", allow=False)
    refused(secure.endpoint, server_key=str(keys.broker_public), key=str(mallory))
    refused(secure.endpoint)  # no CURVE at all: the handshake fails
    public = load_public(mallory.with_suffix(".key"), "key")
    wait_for(lambda: fingerprint(public) in secure.log(), what="the refusal in the broker log")
    line = next(x for x in secure.log().splitlines() if fingerprint(public) in x)
    assert "refused a client with an unknown key" in line and "127.0.0.1" in line


def test_a_key_added_to_the_directory_is_allowed_without_a_restart(secure: BrokerProcess, keys: Keys) -> None:
    late = keys.client("late", allow=False)
    refused(secure.endpoint, server_key=str(keys.broker_public), key=str(late))
    (keys.allowed / "late.key").write_bytes((keys.clients / "late.key").read_bytes())
    with Client(secure.endpoint, server_key=str(keys.broker_public), key=str(late)) as ok:
        assert ok.status()["agents"] == 0


class Relay:
    """A TCP relay on loopback that records every byte from the client to the broker."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.seen = bytearray()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.stopping = False
        self.accepting = threading.Thread(target=self._accept, daemon=True)
        self.accepting.start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record:
                    self.seen += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        """Stop listening; returns once the accept thread ended (a listening socket's close
        does not wake its accept: its shutdown does). The pumps end with their connections."""
        self.stopping = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.accepting.join(10)
        self.listener.close()


@pytest.mark.parametrize("secured", [True, False], ids=["curve", "plain-control"])
def test_traffic_on_the_wire_is_not_plaintext(keys: Keys, secured: bool) -> None:
    ops = keys.client("ops")
    b = BrokerProcess(keys.data, extra=("--secure",) if secured else ())
    b.curve = keys.curve(ops) if secured else ()
    b.start()
    relay = Relay(b.port)
    try:
        options = {"server_key": str(keys.broker_public), "key": str(ops)} if secured else {}
        with Client(f"tcp://127.0.0.1:{relay.port}", **options) as c:
            c.create_task("secret-task-name", data={"password": "hunter2"})
        assert relay.seen, "the relay carried the requests"
        leaked = b"secret-task-name" in relay.seen or b"hunter2" in relay.seen
        assert leaked is not secured  # the control shows the check can fail
    finally:
        relay.close()
        b.stop()
        b.kill()


def test_half_a_configuration_is_refused_naming_what_is_missing(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidArgument, match="key is needed"):
        Client("tcp://127.0.0.1:1", server_key=str(keys.broker_public))
    monkeypatch.setenv("ZMESH_SERVER_KEY", str(keys.broker_public))
    with pytest.raises(InvalidArgument) as err:
        Client("tcp://127.0.0.1:1")
    assert err.value.details["field"] == "ZMESH_KEY"
    monkeypatch.delenv("ZMESH_SERVER_KEY")
    with pytest.raises(ConfigError, match="neither a key file nor a Z85"):
        Client("tcp://127.0.0.1:1", server_key="nope", key=str(keys.client("x")))
    # 40 characters, one of them outside Z85 (pyzmq's decoder raised KeyError: a traceback)
    for bad in ("~" * 40, "a" * 39 + " "):
        with pytest.raises(ConfigError, match="neither a key file nor a Z85"):
            Client("tcp://127.0.0.1:1", server_key=bad, key=str(keys.client(f"x{len(bad)}{bad[-1] == ' '}")))


def test_a_secret_key_others_can_read_is_refused(keys: Keys) -> None:
    secret = keys.client("loose")
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_pair(secret, "key")
    b = BrokerProcess(keys.data, extra=("--secure",))
    keys.broker_secret.chmod(0o640)
    done = subprocess.run(b.command(), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "key_file" in done.stderr and "chmod 600" in done.stderr


def test_a_first_secure_start_makes_the_broker_key(tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    b = BrokerProcess(data, extra=("--secure",))
    log = tmp_path / "broker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(b.command(), stdout=subprocess.DEVNULL, stderr=out, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: "every client is refused until one is added" in log.read_text(), timeout=30,
                 what="the warning that no client key is allowed yet")
        assert (data / "keys" / "authorized").is_dir()
        mode = stat.S_IMODE((data / "keys" / "broker.key_secret").stat().st_mode)
        assert mode == 0o600
    finally:
        proc.terminate()
        proc.wait(30)


def test_keygen_command(tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["--json", "keygen", "alice", "--dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    import json

    got = json.loads(out.stdout)
    assert Path(got["secret"]).stat().st_mode & 0o777 == 0o600
    assert got["fingerprint"] == fingerprint(got["key"].encode())
    assert AllowList(tmp_path).allows(got["key"].encode()) == "alice.key"
    again = runner.invoke(main, ["keygen", "alice", "--dir", str(tmp_path)])
    assert again.exit_code == 2 and "--force" in again.stderr
    assert runner.invoke(main, ["keygen", "alice", "--dir", str(tmp_path), "--force"]).exit_code == 0
    bad = runner.invoke(main, ["keygen", "../x", "--dir", str(tmp_path)])
    assert bad.exit_code == 2 and "NAME" in bad.stderr


def test_the_cli_speaks_curve_from_the_environment(secure: BrokerProcess, keys: Keys) -> None:
    ops = keys.client("cli")
    env = dict(os.environ, ZMESH_SERVER_KEY=str(keys.broker_public), ZMESH_KEY=str(ops))
    done = subprocess.run([sys.executable, "-m", "zmesh", "--broker", secure.endpoint, "task", "add", "c1"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "ZMESH_SERVER_KEY is not a zmesh setting" not in done.stderr
    assert zmesh.__version__


def test_the_readme_security_commands_work_as_written(tmp_path: Path) -> None:
    """The README's lines, run by bash in a fresh HOME: the broker (on free loopback ports,
    the test's only addition, with ZMESH_BROKER pointing the client at them) makes its key,
    keygen makes alice's, the copy allows her, and `zmesh status` gets in over CURVE."""
    import re as _re

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = text.index("## Security: CurveZMQ\n")
    block = _re.search(r"```sh\n(.*?)```", text[start:], _re.S)
    assert block is not None
    lines = [line.split("  #")[0].strip() for line in block.group(1).strip().splitlines()]
    assert lines[0] == "zmesh broker --secure"
    port, pub = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZMESH_")}
    env.update(HOME=str(tmp_path), PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
               ZMESH_BROKER=f"tcp://127.0.0.1:{port}", XDG_DATA_HOME=str(tmp_path / ".local" / "share"))
    broker = subprocess.Popen(["bash", "-c", lines[0] + f" --no-discovery --bind tcp://127.0.0.1:{port} "
                               f"--pub-bind tcp://127.0.0.1:{pub}"], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        keys_dir = tmp_path / ".local" / "share" / "zmesh" / "keys"
        wait_for(lambda: (keys_dir / "broker.key").exists() and (keys_dir / "authorized").is_dir(), timeout=60,
                 what="the broker's key")
        done = subprocess.run(["bash", "-ec", "\n".join(lines[1:])], env=env, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        assert "agents" in done.stdout.lower() or "tasks" in done.stdout.lower(), done.stdout
    finally:
        os.killpg(broker.pid, 15)
        broker.wait(30)


def test_an_agent_belongs_to_the_key_that_registered_it(secure: BrokerProcess, keys: Keys) -> None:
    """A second key cannot act as an agent registered by the first: claim, complete, ack,
    unregister, report and send as it are refused (not_owner), and write nothing."""
    a, b = keys.client("key-a"), keys.client("key-b")
    curve_a = {"server_key": str(keys.broker_public), "key": str(a)}
    curve_b = {"server_key": str(keys.broker_public), "key": str(b)}
    with Client(secure.endpoint, agent="alice", **curve_a) as alice, Client(secure.endpoint, **curve_b) as other:
        alice.create_task("t1")
        alice.create_task("t2")
        claim = alice.claim("t1")
        for act in (lambda: other.claim("t2", agent="alice"),
                    lambda: other.complete("t1", token=claim.token, agent="alice"),
                    lambda: other.release("t1", agent="alice"),
                    lambda: other.unregister("alice"),
                    lambda: other.report("idle", agent="alice"),
                    lambda: other.send("hi", to="bob", sender="alice"),
                    lambda: other.register("alice"),
                    lambda: other.reserve(["src/**"], agent="alice")):
            with pytest.raises(zmesh.NotOwner, match="belongs to another key"):
                act()
        assert alice.task("t2")["status"] == "available" and alice.task("t1")["owner"] == "alice"
        assert [x["id"] for x in alice.agents()] == ["alice"]
        other.register("bob")  # its own agent: fine
        alice.complete("t1", token=claim.token)
    # a new connection with the same key is the same owner
    with Client(secure.endpoint, **curve_a) as again:
        again.create_task("t3")
        assert again.claim("t3", agent="alice") is not None


def test_every_op_that_names_an_agent_is_classified() -> None:
    from zmesh import protocol
    from zmesh.protocol.identity import ACTORS, NOT_ACTING

    named = {name for name, op in protocol.OPS.items() if {"agent", "from"} & set(op.by_name)}
    assert named == set(ACTORS) | NOT_ACTING and not set(ACTORS) & NOT_ACTING
    for op, field in ACTORS.items():
        assert field in protocol.OPS[op].by_name, (op, field)


def test_roles_observer_reads_admin_runs_admin_ops(secure: BrokerProcess, keys: Keys) -> None:
    """An observer reads and cannot write; admin ops work for an admin key only; every
    refusal is an audit event and a broker log line naming the key."""
    curve = {"server_key": str(keys.broker_public)}
    agent_key, observer_key = keys.client("worker"), keys.client("watcher", role="observer")
    with Client(secure.endpoint, agent="w1", key=str(agent_key), **curve) as worker, \
            Client(secure.endpoint, key=str(observer_key), **curve) as watcher:
        worker.create_task("t1")
        worker.claim("t1")
        assert watcher.task("t1")["owner"] == "w1" and watcher.status()["tasks"]["claimed"] == 1
        assert [t["id"] for t in watcher.tasks()] == ["t1"]
        since = watcher.status()["seq"]
        for act in (lambda: watcher.create_task("t2"), lambda: watcher.claim("t1", agent="spy"),
                    lambda: watcher.publish("x", {"a": 1})):
            with pytest.raises(zmesh.Forbidden, match="not allowed for role observer"):
                act()
        with pytest.raises(zmesh.Forbidden, match="admin op"):
            worker.admin_release(task="t1")
        assert worker.task("t1")["owner"] == "w1"
        # an admin key copied in while the broker runs: its new connection is an admin
        admin_key = keys.client("root", role="admin")
        with Client(secure.endpoint, key=str(admin_key), **curve) as root:
            assert root.admin_release(task="t1", reason="reassigning")["agent"] == "w1"
            assert root.task("t1")["status"] == "available"
            events = root.replay(since)["events"]
    refusals = [e["body"] for e in events if e["topic"] == "audit.refused"]
    observer_fp = fingerprint(load_public(observer_key.with_suffix(".key"), "key"))
    agent_fp = fingerprint(load_public(agent_key.with_suffix(".key"), "key"))
    assert [(r["key"], r["role"], r["op"]) for r in refusals] == [
        (observer_fp, "observer", "task_create"), (agent_fp, "agent", "admin_release")]
    [admin] = [e["body"] for e in events if e["topic"] == "audit.admin"]
    assert admin["op"] == "admin_release" and admin["reason"] == "reassigning"
    assert admin["key"] == fingerprint(load_public(admin_key.with_suffix(".key"), "key"))
    wait_for(lambda: f"observer key {observer_fp}" in secure.log(), what="the refusal in the broker log")
    assert f"refused op admin_release for an agent key {agent_fp}" in secure.log()


def test_allow_list_roles(tmp_path: Path) -> None:
    allowed = tmp_path / "authorized"
    (allowed / "admins").mkdir(parents=True)
    a_pub, _ = keygen(allowed, "a")
    o_pub, _ = keygen(allowed / "observers", "o")
    both, _ = keygen(tmp_path / "k", "both")
    (allowed / "admins" / "both.key").write_bytes(both.read_bytes())
    (allowed / "both.key").write_bytes(both.read_bytes())
    listed = AllowList(allowed)
    role = {name: listed.role(load_public(path, "k")) for name, path in (("a", a_pub), ("o", o_pub), ("both", both))}
    assert role == {"a": "agent", "o": "observer", "both": "admin"}  # the highest role it was given
    assert listed.doubled and fingerprint(load_public(both, "k")) in listed.doubled[0]
    assert listed.allows(load_public(o_pub, "k")) == "observers/o.key"


def test_a_backup_is_an_admins_to_ask(secure: BrokerProcess, keys: Keys, tmp_path: Path) -> None:
    """Issue 18: `backup` writes files on the broker's host, so only an admin key may ask
    for one; an agent's or an observer's ask is refused and nothing is written."""
    curve = {"server_key": str(keys.broker_public)}
    agent_key, observer_key = keys.client("worker"), keys.client("watcher", role="observer")
    admin_key = keys.client("root", role="admin")
    for key in (agent_key, observer_key):
        with Client(secure.endpoint, key=str(key), **curve) as c:
            with pytest.raises(zmesh.Forbidden, match="admin op"):
                c.backup(str(tmp_path / "bk"))
    assert not (tmp_path / "bk").exists()
    with Client(secure.endpoint, key=str(admin_key), **curve) as root:
        assert root.backup(str(tmp_path / "bk"))["bytes"] == (tmp_path / "bk" / "data.mdb").stat().st_size
