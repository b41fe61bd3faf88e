"""A backup carries the broker's keys (its pair, the public keys its allow-list admits), and a
restore puts them where the restored broker reads them: a secure broker comes back with the
identity its clients pinned, admitting the same clients in the same roles.

Every broker is a real process on loopback, stopped by PID; the CLI runs as a subprocess."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import zmq.auth

from zmesh import Client
from zmesh.errors import Forbidden
from zmesh.transport.keys import AllowList, fingerprint, load_pair
from zmesh.testing import BrokerProcess

from .test_cli import clean_env, run
from .test_security import Keys

pytestmark = pytest.mark.timeout(120)


def _secure(keys: Keys, data: Path, admin: Path) -> BrokerProcess:
    b = BrokerProcess(data, extra=("--secure",))
    b.curve = keys.curve(admin)
    return b.start()


def _roles(directory: Path) -> dict[bytes, str]:
    return {key: role for key, (_file, role) in AllowList(directory).entries().items()}


def _cli(b: BrokerProcess, keys: Keys, secret: Path, *args: str) -> dict:
    env = clean_env(ZMESH_SERVER_KEY=str(keys.broker_public), ZMESH_KEY=str(secret))
    r = run("--broker", b.endpoint, *args, "--json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_restored_secure_broker_keeps_its_identity_and_admits_the_same_clients(tmp_path: Path) -> None:
    keys = Keys(tmp_path)
    ops = keys.client("ops", role="admin")
    alice = keys.client("alice")
    watch = keys.client("watch", role="observer")
    bob = keys.client("bob", allow=False)  # allowed by its secret file alone: only the public half is copied
    (keys.allowed / bob.name).write_bytes(bob.read_bytes())
    (keys.allowed / bob.name).chmod(0o600)
    broker_fp = fingerprint(load_pair(keys.broker_secret, "key_file").public)
    before = _roles(keys.allowed)
    assert len(before) == 4

    b = _secure(keys, keys.data, ops)
    dest = tmp_path / "bk"
    try:
        with Client(b.endpoint, agent="alice", server_key=str(keys.broker_public), key=str(alice)) as c:
            c.register(capabilities=["py"])
            c.create_task("t1")
        out = _cli(b, keys, ops, "backup", str(dest))
    finally:
        assert b.stop() == 0
    assert out["keys"] == {"broker_key": broker_fp, "authorized": 4}
    saved = dest / "keys"
    assert os.stat(saved / "broker.key_secret").st_mode & 0o777 == 0o600
    assert (saved / "broker.key").read_bytes() and load_pair(saved / "broker.key_secret", "x").fingerprint == broker_fp
    copied = sorted(p.relative_to(saved / "authorized").as_posix() for p in (saved / "authorized").rglob("*") if p.is_file())
    assert copied == ["admins/ops.key", "alice.key", "bob.key", "observers/watch.key"]
    assert all(zmq.auth.load_certificate(str(saved / "authorized" / f))[1] is None for f in copied), \
        "a client's secret was copied"

    new = tmp_path / "new"
    r = run("restore", str(dest), "--data", str(new), "--json")
    assert r.returncode == 0, r.stderr
    restored = json.loads(r.stdout)["keys"]
    assert restored == {"broker_key": broker_fp, "authorized": 4, "key_file": str(new / "keys" / "broker.key_secret"),
                        "authorized_keys": str(new / "keys" / "authorized"), "kept": []}
    assert _roles(new / "keys" / "authorized") == before

    b2 = _secure(keys, new, ops)  # the clients' pinned server key is the old broker's
    try:
        with Client(b2.endpoint, agent="alice", server_key=str(keys.broker_public), key=str(alice)) as c:
            assert c.task("t1")["status"] == "available"
            assert c.claim("t1").task_id == "t1"  # an agent still: it may write
        with Client(b2.endpoint, server_key=str(keys.broker_public), key=str(bob)) as c:
            assert c.task("t1")["id"] == "t1"
        with Client(b2.endpoint, server_key=str(keys.broker_public), key=str(watch)) as c:
            with pytest.raises(Forbidden):
                c.create_task("t2")  # still an observer
        assert "made the broker's key pair" not in b2.log()
    finally:
        assert b2.stop() == 0


def test_no_keys_and_keys_already_in_place(tmp_path: Path) -> None:
    keys = Keys(tmp_path)
    ops = keys.client("ops", role="admin")
    b = _secure(keys, keys.data, ops)
    try:
        bare = _cli(b, keys, ops, "backup", str(tmp_path / "bare"), "--no-keys")
        full = _cli(b, keys, ops, "backup", str(tmp_path / "full"))
    finally:
        assert b.stop() == 0
    assert bare["keys"] is None and not (tmp_path / "bare" / "keys").exists()
    assert full["keys"]["authorized"] == 1

    target = tmp_path / "target"
    other = keys.client("other")  # a key pair already where the restored broker reads its own
    (target / "keys").mkdir(parents=True)
    (target / "keys" / "broker.key_secret").write_bytes(other.read_bytes())
    r = run("restore", str(tmp_path / "full"), "--data", str(target))
    assert r.returncode == 1 and "broker.key_secret is already there" in r.stderr and "--no-keys" in r.stderr, r.stderr
    assert not (target / "data.mdb").exists(), "a refused restore moved the data in"

    r = run("restore", str(tmp_path / "full"), "--data", str(target), "--no-keys", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["keys"] is None, r.stderr
    assert (target / "keys" / "broker.key_secret").read_bytes() == other.read_bytes()

    r = run("restore", str(tmp_path / "full"), "--data", str(target), "--force", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)["keys"]
    assert got["broker_key"] == fingerprint(load_pair(keys.broker_secret, "x").public)
    assert len(got["kept"]) == 1 and Path(got["kept"][0]).read_bytes() == other.read_bytes()
    assert (target / "keys" / "broker.key_secret").read_bytes() == keys.broker_secret.read_bytes()


def test_a_broker_that_never_ran_secure_has_no_keys_to_copy(broker: BrokerProcess, tmp_path: Path) -> None:
    r = run("--broker", broker.endpoint, "backup", str(tmp_path / "bk"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["keys"] == {"broker_key": None, "authorized": 0}
    assert not (tmp_path / "bk" / "keys").exists()
    r = run("restore", str(tmp_path / "bk"), "--data", str(tmp_path / "new"), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["keys"] is None, r.stderr
    assert not (tmp_path / "new" / "keys").exists()
    r = run("--broker", broker.endpoint, "backup", str(tmp_path / "bk2"))
    assert r.returncode == 0 and "keys: none (the broker never ran secure)" in r.stdout, r.stdout


def test_a_restore_into_a_running_broker_s_directory_says_so_first(tmp_path: Path) -> None:
    """It said its keys were "already there" and suggested --force (found in the new-user trial)."""
    keys = Keys(tmp_path)
    ops = keys.client("ops", role="admin")
    b = _secure(keys, keys.data, ops)
    try:
        _cli(b, keys, ops, "backup", str(tmp_path / "bk"))
        for extra in ((), ("--force",), ("--no-keys",)):
            r = run("restore", str(tmp_path / "bk"), "--data", str(keys.data), *extra)
            assert r.returncode == 1 and "in use by a running broker" in r.stderr, (extra, r.stderr)
            assert "--force" not in r.stderr
    finally:
        assert b.stop() == 0
