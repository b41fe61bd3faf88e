"""The benchmark's peer adapters against the real servers (127.0.0.1, free ports, data under
tmp_path): a fresh key is won once and lost by everyone after, pub/sub returns the payload
byte for byte, the stated durability is the configured one, and stop() leaves no process.

A peer whose binary or client library is missing is skipped with the reason start() gives,
the same reason the harness reports; nothing is faked."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from bench import peers, systems
from bench.systems import System

pytestmark = pytest.mark.timeout(20)

PEERS: dict[str, Callable[[], System]] = {
    "redis": lambda: peers.RedisSystem(aof_always=False),
    "redis-aof-always": lambda: peers.RedisSystem(aof_always=True),
    "etcd": peers.EtcdSystem,
    "nats-kv": peers.NatsSystem,
}


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(params=list(PEERS))
def started(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[System, dict[str, Any]]]:
    system = PEERS[request.param]()
    try:
        info = system.start(tmp_path)
    except peers.PeerUnavailable as exc:
        system.stop()
        pytest.skip(str(exc))
    try:
        yield system, info
    finally:
        system.stop()


def test_available_peers_in_report_order() -> None:
    systems = peers.available_peers()
    assert [s.name for s in systems] == ["redis", "redis-aof-always", "etcd", "nats-kv"]
    for s in systems:
        assert s.kinds == frozenset({"claim", "broadcast"})
        assert s.durability and not s.servers


def test_claim_won_once_then_lost(started: tuple[System, dict[str, Any]]) -> None:
    system, info = started
    assert info["kind"] in {"redis", "etcd", "nats"} and system.version
    ttl = float(info.get("ttl", 60.0))
    a, b = systems.claim_client(info, "agent-a"), systems.claim_client(info, "agent-b")
    try:
        assert a.claim("task-1", ttl) is True
        assert b.claim("task-1", ttl) is False  # another agent loses
        assert a.claim("task-1", ttl) is False  # and so does a second claim by the winner
        assert b.claim("task-2", ttl) is True
        assert a.claim("odd key: ü.=*>", ttl) is True  # keys outside a peer's alphabet still work
        assert b.claim("odd key: ü.=*>", ttl) is False
    finally:
        a.close()
        b.close()


def test_pubsub_returns_payload_bytes(started: tuple[System, dict[str, Any]]) -> None:
    _, info = started
    subs = [systems.subscriber(info), systems.subscriber(info)]  # subscribed when constructed
    pub = systems.publisher(info)
    try:
        payloads = [time.monotonic_ns().to_bytes(8, "big") + bytes(range(256)) + b"\x00\r\n" + bytes([i])
                    for i in range(3)]
        for p in payloads:
            pub.publish(p)
        for sub in subs:
            assert [sub.recv(5.0) for _ in payloads] == payloads
            assert sub.recv(0.2) is None
    finally:
        pub.close()
        for sub in subs:
            sub.close()


def test_stop_leaves_no_process(started: tuple[System, dict[str, Any]]) -> None:
    system, _ = started
    pids = [s.pid for s in system.servers]
    assert pids and all(p is not None and not _pid_gone(p) for p in pids)
    system.stop()
    assert system.servers == []
    assert all(_pid_gone(p) for p in pids if p is not None)


def test_configured_durability_is_the_stated_one(started: tuple[System, dict[str, Any]]) -> None:
    """The durability text beside every figure must match what the server really runs with."""
    system, info = started
    if info["kind"] == "redis":
        import redis

        r = redis.Redis(host=info["host"], port=info["port"], decode_responses=True)
        try:
            assert r.config_get("save")["save"] == ""
            assert r.config_get("appendonly")["appendonly"] == ("yes" if system.name == "redis-aof-always" else "no")
            if system.name == "redis-aof-always":
                assert r.config_get("appendfsync")["appendfsync"] == "always"
        finally:
            r.close()
    elif info["kind"] == "nats":
        from nats.js.api import StorageType

        async def config() -> Any:
            nc = await peers._nats_connect(info["url"])
            try:
                return (await nc.jetstream().stream_info(f"KV_{info['bucket']}")).config
            finally:
                await nc.close()

        cfg = asyncio.run(config())
        assert cfg.storage == StorageType.FILE and cfg.max_msgs_per_subject == 1
        assert cfg.max_age == pytest.approx(info["ttl"])
    else:
        assert info["kind"] == "etcd" and "WAL fsync" in system.durability


def test_nats_refuses_a_ttl_its_bucket_cannot_express(tmp_path: Path) -> None:
    system = peers.NatsSystem(ttl=30.0)
    try:
        info = system.start(tmp_path)
    except peers.PeerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        c = systems.claim_client(info, "a")
        try:
            with pytest.raises(ValueError, match="one TTL per bucket"):
                c.claim("k", 60.0)
        finally:
            c.close()
        system.prepare(dict(info, ttl=60.0), [])  # the harness's TTL: the bucket follows it
        c = systems.claim_client(dict(info, ttl=60.0), "a")
        try:
            assert c.claim("k", 60.0) is True
        finally:
            c.close()
    finally:
        system.stop()


def test_nats_key_mapping_is_valid_and_injective() -> None:
    import re

    valid = re.compile(r"^[-/_=a-zA-Z0-9]+$")
    keys = ["lat-12", "thr16-c3-w5", "a.b", "a=2Eb", "a b", "ü", "", "\x00", ".", "=", "x*>"]
    mapped = [peers.nats_key(k) for k in keys]
    assert all(valid.match(m) for m in mapped)
    assert len(set(mapped)) == len(keys)
    assert peers.nats_key("thr16-c3-w5") == "thr16-c3-w5"


def test_missing_binary_is_a_reported_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers.shutil, "which", lambda name: None)
    monkeypatch.setattr(peers, "_EXTRA_BIN_DIRS", ())
    for system in peers.available_peers():
        with pytest.raises(peers.PeerUnavailable, match="not found"):
            system.start(tmp_path)
        assert system.servers == []
