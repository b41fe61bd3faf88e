"""Health (issue 18 part 3): the pure judgement of each check against its threshold, and
real brokers: a fresh one is healthy (the op, `zmesh health`, GET /health), one whose LMDB
map is nearly full is degraded with the reason (exit 1, HTTP 503, zmesh_healthy 0), and no
broker at all is exit 3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from zmesh import Client
from zmesh.broker.loop import USAGE_CHECK_S
from zmesh.cli._docs import HEALTH_KEYS, JSON_SHAPES
from zmesh.broker.metrics import (COMMIT_WINDOW, DISK_FREE_MIN_BYTES, DISK_FREE_MIN_RATIO, MAP_USE_MAX, SLOW_COMMIT_S,
                           judge)
from zmesh.testing import BrokerProcess, free_port

from .conftest import wait_for
from .test_cli import Cli, run
from .test_metrics import get, metrics_url, scrape, value

GIB = 1 << 30
ROOMY = {"map_use": 0.1, "used_bytes": 1 << 20, "map_size": 10 << 20, "disk_free_bytes": 50 * GIB,
         "disk_size_bytes": 100 * GIB, "data": "/var/lib/zmesh"}


# ------------------------------------------------------------------ the checks (pure)
def test_roomy_and_fast_is_healthy() -> None:
    assert judge(ROOMY, 0.004) == []
    assert judge(ROOMY, None) == []  # too few batches to judge commits
    assert judge({}, None) == []  # a store that is not LMDB has no figures to judge


def test_map_use_at_the_threshold_is_degraded() -> None:
    assert judge(dict(ROOMY, map_use=MAP_USE_MAX - 0.0001), None) == []
    [reason] = judge(dict(ROOMY, map_use=MAP_USE_MAX), None)
    assert reason.startswith("map_use: ") and "90.0%" in reason and "map_size" in reason


def test_slow_commits_are_degraded() -> None:
    assert judge(ROOMY, SLOW_COMMIT_S) == []
    [reason] = judge(ROOMY, SLOW_COMMIT_S + 0.1)
    assert reason.startswith("commits: p95 600 ms") and f"last {COMMIT_WINDOW} batches" in reason


@pytest.mark.parametrize("free,size,degraded", [
    (50 * GIB, 100 * GIB, False),
    (DISK_FREE_MIN_BYTES - 1, 100 * GIB, True),  # below the byte floor (and the ratio)
    (int(DISK_FREE_MIN_RATIO * 100 * GIB) - 1, 100 * GIB, True),  # 5 GiB free of 100: below the ratio
    (DISK_FREE_MIN_BYTES + 1, 2 * DISK_FREE_MIN_BYTES, False),  # a small disk half free
    (DISK_FREE_MIN_BYTES - 1, 2 * DISK_FREE_MIN_BYTES, True),
])
def test_disk_floors(free: int, size: int, degraded: bool) -> None:
    reasons = judge(dict(ROOMY, disk_free_bytes=free, disk_size_bytes=size), None)
    assert bool(reasons) is degraded
    if degraded:
        assert reasons[0].startswith("disk: ") and "/var/lib/zmesh" in reasons[0]


def test_every_failing_check_is_a_reason_of_its_own() -> None:
    reasons = judge(dict(ROOMY, map_use=0.95, disk_free_bytes=1), 2.0)
    assert [r.split(":")[0] for r in reasons] == ["map_use", "commits", "disk"]


# ------------------------------------------------------------------ real brokers
def test_a_fresh_broker_is_healthy(broker: BrokerProcess, make_client: Callable[..., Any]) -> None:
    z = Cli(broker.endpoint)
    r = z("health")
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    c = make_client(broker.endpoint, heartbeat=False)
    broker_id = c.hello()["broker_id"]
    assert first.startswith(f"healthy: broker {broker_id} v") and "uptime=" in first and "seq=" in first
    assert second.startswith("store: ") and "used of a 8.0 GiB map (0.0%)" in second
    report = z.json("health", "--json")
    assert tuple(report) == HEALTH_KEYS == JSON_SHAPES["health"][0]  # type: ignore[index]
    assert report["healthy"] is True and report["reasons"] == [] and report["broker_id"] == broker_id
    assert 0 < report["used_bytes"] <= report["store_bytes"] and report["map_size"] == 8 * GIB
    assert report["thresholds"] == {"map_use": MAP_USE_MAX, "commit_p95_ms": SLOW_COMMIT_S * 1000,
                                    "disk_free_bytes": DISK_FREE_MIN_BYTES, "disk_free_ratio": DISK_FREE_MIN_RATIO}
    c.create_task("t")
    got = c.health()  # through the client (sync and async), after a write
    assert tuple(got) == HEALTH_KEYS and got["healthy"] is True and got["seq"] == report["seq"] + 1
    assert got["commits"] > report["commits"] and got["uptime"] >= report["uptime"]


def test_a_nearly_full_map_is_degraded(tmp_path: Path, broker_factory: Callable[..., BrokerProcess]) -> None:
    conf = tmp_path / "tiny.toml"
    conf.write_text("[broker]\nmap_size = 1048576\n")  # 1 MiB: LMDB doubles it when full, so we stop short
    broker = broker_factory(extra=("--config", str(conf), "--metrics", "127.0.0.1:0"))
    url = metrics_url(broker)
    with Client(broker.endpoint, heartbeat=False) as c:
        report = c.health()
        assert report["map_size"] == 1 << 20 and report["healthy"] is True
        n = 0
        while report["map_use"] < MAP_USE_MAX:  # one small task at a time: no step jumps past the 10 % margin
            assert n < 20_000, report
            c.create_task(f"fill-{n}", data="x" * 400)
            n += 1
            report = c.health()
        assert report["healthy"] is False and report["reasons"][0].startswith("map_use: "), report
    z = Cli(broker.endpoint)
    r = z("health")
    assert r.returncode == 1 and r.stderr == "", (r.stdout, r.stderr)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("degraded: broker ") and any(line.startswith("map_use: the LMDB map is ")
                                                            for line in lines[2:]), r.stdout
    r = z("health", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["healthy"] is False
    status, _, body = get(url + "/health")
    assert status == 503 and json.loads(body)["reasons"][0].startswith("map_use: ")
    _, samples, _ = scrape(url)
    assert value(samples, "zmesh_healthy") == 0 and value(samples, "zmesh_store_map_use_ratio") >= MAP_USE_MAX
    # the broker's log says it too: one store.near_full line (looked at every USAGE_CHECK_S)
    wait_for(lambda: "store near full:" in broker.log(), timeout=USAGE_CHECK_S + 5, what="the near-full warning")


def test_no_broker_is_exit_3() -> None:
    r = run("--broker", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.5", "health")
    assert r.returncode == 3 and r.stdout == "" and r.stderr.startswith("zmesh: unreachable: "), r
    r = run("--broker", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.5", "health", "--json")
    assert r.returncode == 3 and json.loads(r.stderr)["code"] == "unreachable"
