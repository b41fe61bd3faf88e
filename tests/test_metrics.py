"""Metrics (issue 18 part 1): what the loop counts (BrokerStats: bucket math, quantile,
derived claims), the metric table against the collector and docs/OPERATIONS.md, and the
HTTP endpoint of real brokers: scraped during a claim load with deliberate conflicts, the
counts equal what the clients saw; promtool accepts a scrape; the Grafana dashboard names
only metrics a scrape has; a loop that does not answer is a 503; a taken address fails the
start like a taken port."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from zmesh import Client
from zmesh import protocol
from zmesh.config import BrokerConfig
from zmesh.core import Core, Now
from zmesh.errors import InvalidArgument
from zmesh.broker.metrics import (BATCH_BUCKETS, COMMIT_MIN_SAMPLES, LATENCY_BUCKETS, METRICS, MSG_TOPICS, BrokerStats,
                           families, quantile, take_snapshot)
from zmesh.broker.metrics_http import ANSWER_TIMEOUT_S, parse_address
from zmesh.protocol import Event
from zmesh.store import MemoryStore
from zmesh.testing import BrokerProcess, free_port

from .conftest import ROOT, wait_for

DASHBOARD = ROOT / "conf" / "grafana-zmesh.json"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"


# ------------------------------------------------------------------ helpers
def get(url: str, timeout: float = 10.0) -> tuple[int, str, str]:
    """(status, content type, body) of GET url; an HTTP error status is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[set[str], Samples]:
    """Family names and every sample, keyed by (sample name, labels)."""
    names, samples = set(), {}
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return names, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(base: str) -> tuple[set[str], Samples, str]:
    status, ctype, body = get(base + "/metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, body)
    return (*parse(body), body)


def metrics_url(b: BrokerProcess) -> str:
    """The endpoint's address as the ready line logs it (started on port 0)."""
    found = re.findall(r"metrics=(http://\S+)", b.log())
    assert found, b.log()
    return found[-1]


@pytest.fixture
def metered(broker_factory: Callable[..., BrokerProcess]) -> tuple[BrokerProcess, str]:
    b = broker_factory(extra=("--metrics", "127.0.0.1:0"))
    return b, metrics_url(b)


def _item(op: str, at: float, outcome: str | None = "ok") -> Any:
    return SimpleNamespace(req=SimpleNamespace(op=op), at=at, outcome=outcome)


# ------------------------------------------------------------------ BrokerStats
def test_latency_lands_in_the_first_bucket_at_or_above_it() -> None:
    st = BrokerStats()
    claim = st.ops["claim"]
    # took exactly a bound: that bucket (le); just above: the next; above all: the overflow
    st.replied([_item("claim", 10.0 - 0.001), _item("claim", 10.0 - 0.0010001), _item("claim", 10.0 - 11)], 10.0)
    hist = st.latency[claim]
    i = LATENCY_BUCKETS.index(0.001)
    assert hist[i] == 1 and hist[i + 1] == 1 and hist[-1] == 1 and sum(hist) == 3
    assert st.latency_sum[claim] == pytest.approx(0.001 + 0.0010001 + 11)
    assert st.results[claim] == {"ok": 3}


def test_a_waiting_request_counts_when_answered() -> None:
    st = BrokerStats()
    waiting = _item("reserve", 1.0, outcome=None)
    st.replied([waiting], 1.5)
    assert sum(st.latency[st.ops["reserve"]]) == 0 and st.results[st.ops["reserve"]] == {}
    st.answered([(waiting, "conflict")], 4.0)  # its latency runs from when it was read
    assert st.results[st.ops["reserve"]] == {"conflict": 1}
    assert st.latency_sum[st.ops["reserve"]] == pytest.approx(3.0)


def test_claims_come_from_the_claim_results() -> None:
    st = BrokerStats()
    st.replied([_item("claim", 0, "ok"), _item("claim", 0, "conflict"), _item("claim", 0, "conflict"),
                _item("claim_next", 0, "ok"), _item("claim_next", 0, "empty"), _item("claim", 0, "not_found")], 0.001)
    assert st.claims() == {"success": 2, "conflict": 2, "empty": 1}


def test_batch_and_commit_histograms_and_events_by_topic() -> None:
    st = BrokerStats()
    st.committed(0, 0.0001, [])
    st.committed(3, 0.2, [Event("task.claimed", 1, {}), Event("msg.deploy.done", 2, {}), Event("msg.x", 3, {})])
    st.committed(600, 20.0, [])
    assert st.batch_sizes[BATCH_BUCKETS.index(0)] == 1 and st.batch_sizes[BATCH_BUCKETS.index(4)] == 1
    assert st.batch_sizes[-1] == 1 and st.batch_sum == 603
    assert st.commit_times[LATENCY_BUCKETS.index(0.0001)] == 1 and st.commit_times[-1] == 1
    assert st.events["task.claimed"] == 1 and st.events[MSG_TOPICS] == 2
    assert set(st.events) == {t for t in protocol.TOPICS if not t.startswith("msg.")} | {MSG_TOPICS}


def test_expiries_by_kind() -> None:
    st = BrokerStats()
    st.expired([Event("agent.expired", 1, {"agent": "a"}), Event("task.released", 2, {"reason": "lease_expired"}),
                Event("task.released", 3, {"reason": "claim_expired"}),
                Event("reservation.expired", 4, {"reason": "claim_expired"}),
                Event("reservation.expired", 5, {"reason": "lease_expired"}), Event("agent.evasive", 6, {})])
    assert st.expiries == {"lease": 1, "task": 1, "reservation": 1}


def test_pushes_redeliveries_and_failures() -> None:
    st = BrokerStats()
    first, again, lost = (SimpleNamespace(priority="high", attempt=1), SimpleNamespace(priority="low", attempt=3),
                          SimpleNamespace(priority="high", attempt=1))
    st.pushed([first, again, lost], [lost])  # type: ignore[list-item]
    assert st.deliveries == {"critical": 0, "high": 1, "normal": 0, "low": 1}
    assert (st.redeliveries, st.push_failures) == (1, 1)


def test_quantile_is_nearest_rank() -> None:
    assert quantile([], 0.95) is None
    assert quantile([7.0], 0.95) == 7.0
    samples = [float(i) for i in range(1, 101)]  # 1..100
    assert quantile(samples, 0.5) == 51.0 and quantile(samples, 0.95) == 96.0 and quantile(samples, 1.0) == 100.0
    assert quantile(reversed(samples), 0.95) == 96.0


def test_commit_p95_waits_for_enough_batches() -> None:
    st = BrokerStats()
    for _ in range(COMMIT_MIN_SAMPLES - 1):
        st.committed(1, 0.9, [])
    assert st.commit_p95() is None
    st.committed(1, 0.001, [])
    assert st.commit_p95() == 0.9


def test_a_copy_does_not_move_with_the_loop() -> None:
    st = BrokerStats()
    st.replied([_item("claim", 0)], 0.001)
    st.committed(1, 0.001, [])
    copy = st.copy()
    st.replied([_item("claim", 0)], 0.001)
    st.committed(1, 0.001, [Event("task.claimed", 1, {})])
    assert sum(copy.latency[copy.ops["claim"]]) == 1 and copy.results[copy.ops["claim"]] == {"ok": 1}
    assert len(copy.recent) == 1 and copy.events["task.claimed"] == 0


# ------------------------------------------------------------------ the table
def _exposed(family: Any) -> str:
    return family.name + "_total" if family.type == "counter" else family.name


def test_the_collector_yields_exactly_the_table() -> None:
    store, core = MemoryStore(), Core()
    with store.write() as txn:
        core.recover(txn, Now(0.0, 1000.0))
    snap = take_snapshot(core, store, BrokerStats(), Now(1.0, 1001.0), started=1000.0, low_requests=0)
    got = list(families(snap))
    assert [_exposed(f) for f in got] == [m.name for m in METRICS]
    for family, metric in zip(got, METRICS):
        assert family.type == metric.kind and family.documentation == metric.doc, metric.name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == set(metric.labels), metric.name
    assert all(m.name.startswith("zmesh_") for m in METRICS)
    assert len({m.name for m in METRICS}) == len(METRICS)


def test_operations_doc_lists_every_metric() -> None:
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from gen_operations import render_checks, render_metrics
    finally:
        sys.path.remove(str(ROOT / "docs"))
    text = OPERATIONS.read_text()
    assert render_metrics() in text and render_checks() in text, "run: python docs/gen_operations.py"
    for section in ("## Metrics", "## Health"):
        assert section in text


# ------------------------------------------------------------------ address
@pytest.mark.parametrize("text,expected", [("127.0.0.1:7702", ("127.0.0.1", 7702)), ("0.0.0.0:0", ("0.0.0.0", 0)),
                                           ("[::1]:9", ("::1", 9)), ("localhost:65535", ("localhost", 65535)),
                                           ("metrics.lan.:80", ("metrics.lan.", 80))])
def test_good_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "7702", ":7702", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "h:-1", "h:1x",
                                  "::1:80", "[::g]:80", "[::1:80", "999.1.1.1:80", "bad host:80", "h:\u0661",
                                  "-x:80", "h:000000080"])
def test_bad_addresses_are_refused_naming_the_rule(text: str) -> None:
    with pytest.raises(InvalidArgument, match="HOST:PORT"):
        parse_address(text)


# ------------------------------------------------------------------ a real broker
def test_scrapes_during_a_claim_load_match_what_the_clients_saw(metered: tuple[BrokerProcess, str]) -> None:
    broker, url = metered
    agents, own, contested = 4, 6, 8
    admin = Client(broker.endpoint, heartbeat=False)
    for i in range(contested):
        admin.create_task(f"race-{i}")
    seen = {"claims": 0, "success": 0, "conflict": 0}
    lock = threading.Lock()
    start = threading.Barrier(agents)
    errors: list[BaseException] = []

    def agent(a: int) -> None:
        try:
            with Client(broker.endpoint, agent=f"w{a}") as c:
                mine = [f"own-{a}-{i}" for i in range(own)]
                for task in mine:
                    c.create_task(task)
                won = []
                for i in range(contested):
                    start.wait(10)  # every agent claims the same task at once: one wins
                    got = c.claim(f"race-{i}")
                    with lock:
                        seen["claims"] += 1
                        seen["success" if got else "conflict"] += 1
                    if got:
                        won.append(got)
                for task in mine:
                    got = c.claim(task)
                    with lock:
                        seen["claims"] += 1
                        seen["success" if got else "conflict"] += 1
                    if got and task.endswith(("0", "2")):
                        c.complete(task, token=got.token)
                for claim in won:
                    c.release(claim.task_id, token=claim.token)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    scrapes: list[int] = []
    done = threading.Event()

    def scraper() -> None:  # scrapes while the loop is busy: each must parse
        try:
            while not done.is_set():
                names, samples, _ = scrape(url)
                assert "zmesh_requests" in names
                scrapes.append(int(value(samples, "zmesh_request_duration_seconds_count", op="claim")))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(a,)) for a in range(agents)]
    watcher = threading.Thread(target=scraper)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    done.set()
    watcher.join(30)
    assert not errors, errors
    assert scrapes and scrapes == sorted(scrapes), "a claim count went backwards between scrapes"
    assert seen["claims"] == agents * (own + contested)
    assert seen["success"] == agents * own + contested and seen["conflict"] == contested * (agents - 1)

    _, samples, _ = scrape(url)
    assert value(samples, "zmesh_request_duration_seconds_count", op="claim") == seen["claims"]
    assert value(samples, "zmesh_request_duration_seconds_bucket", op="claim", le="+Inf") == seen["claims"]
    assert value(samples, "zmesh_claims_total", result="success") == seen["success"]
    assert value(samples, "zmesh_claims_total", result="conflict") == seen["conflict"]
    assert value(samples, "zmesh_requests_total", op="claim", result="ok") == seen["success"]
    assert value(samples, "zmesh_requests_total", op="claim", result="conflict") == seen["conflict"]
    assert value(samples, "zmesh_requests_total", op="task_create", result="ok") == agents * own + contested
    status = admin.status()
    for state, n in status["tasks"].items():
        assert value(samples, "zmesh_tasks", state=state) == n, state
    # each agent completed two of its own; closing unregistered it, releasing what it still held
    assert status["tasks"] == {"waiting": 0, "available": agents * (own - 2) + contested, "claimed": 0,
                               "completed": agents * 2, "dead": 0}
    for state, n in status["states"].items():
        assert value(samples, "zmesh_agents", state=state) == n, state
    assert value(samples, "zmesh_claims_held", kind="task") == status["claims"]
    assert value(samples, "zmesh_event_seq") <= admin.status()["seq"]
    assert value(samples, "zmesh_events_total", topic="task.claimed") == seen["success"]
    assert value(samples, "zmesh_commit_batch_size_count") == value(samples, "zmesh_commit_duration_seconds_count") > 0
    assert value(samples, "zmesh_healthy") == 1 and value(samples, "zmesh_uptime_seconds") > 0
    assert 0 < value(samples, "zmesh_store_used_bytes") <= value(samples, "zmesh_store_map_bytes")
    # the journal (durability full): a batch that wrote is a record, on disk before its reply
    # (a batch of reads and refusals writes none)
    written = value(samples, "zmesh_journal_seq", state="written")
    assert 0 < written <= value(samples, "zmesh_commit_duration_seconds_count")
    assert value(samples, "zmesh_journal_seq", state="synced") == written
    flushes = value(samples, "zmesh_journal_flushes_total")
    assert 0 < flushes <= written and value(samples, "zmesh_journal_flush_seconds_total") > 0
    assert value(samples, "zmesh_journal_written_bytes_total") >= written * 16  # a record head is 16 bytes
    wal = sorted((broker.data / "journal").glob("*.wal"))
    assert value(samples, "zmesh_journal_segments") == len(wal) >= 1
    assert value(samples, "zmesh_journal_disk_bytes") == sum(p.stat().st_size for p in wal)
    assert value(samples, "zmesh_checkpoint_seq") <= written
    assert value(samples, "zmesh_journal_since_checkpoint_bytes") > 0
    admin.close()


def test_promtool_accepts_a_scrape(metered: tuple[BrokerProcess, str]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus: tests/setup_promtool.sh installs it)")
    broker, url = metered
    with Client(broker.endpoint, agent="a") as c:
        c.create_task("t")
        c.claim("t")
        c.publish("deploy.done", {"ok": True})
    _, _, text = scrape(url)
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def _dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
              for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_dashboard_is_importable_with_a_prometheus_input() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    assert board["__inputs"][0]["pluginId"] == "prometheus"
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for p in panels:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
            assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
    titles = " ".join(p["title"].lower() for p in panels)
    for wanted in ("claim latency", "requests", "tasks", "agents", "queue", "commit", "map", "expiries"):
        assert wanted in titles, wanted


def test_dashboard_names_only_metrics_a_scrape_has(metered: tuple[BrokerProcess, str]) -> None:
    broker, url = metered
    with Client(broker.endpoint, agent="a") as c:
        c.create_task("t")
        c.claim("t")
    _, samples, _ = scrape(url)
    exposed = {name for name, _ in samples}
    used = {n for expr in _dashboard_exprs() for n in re.findall(r"\bzmesh_[a-z0-9_]+", expr)}
    assert used and used <= exposed, sorted(used - exposed)
    assert "zmesh_request_duration_seconds_bucket" in used  # claim p50/p95/p99 come from the op histogram


def test_refused_requests_are_counted_by_code(metered: tuple[BrokerProcess, str]) -> None:
    import zmq

    broker, url = metered
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(broker.endpoint)
        for frames in ([b"ZM1\x04nope" + b"r1", b"{}"], [b"ZM1\x05claim" + b"r2", b"{not json"],
                       [b"ZM1\x05claim" + b"r3", b'{"task": "t"}']):
            sock.send_multipart(frames)
            assert sock.poll(10_000), "no answer"
            assert not protocol.decode_reply(sock.recv_multipart()).ok
    finally:
        sock.close(0)
    _, samples, _ = scrape(url)
    assert value(samples, "zmesh_refused_requests_total", code="unknown_op") == 1
    assert value(samples, "zmesh_refused_requests_total", code="bad_request") == 2
    assert value(samples, "zmesh_refused_requests_total", code="too_large") == 0  # a series from the start
    assert value(samples, "zmesh_request_duration_seconds_count", op="claim") == 0  # refused before any op ran


def test_health_over_http_and_other_paths(metered: tuple[BrokerProcess, str]) -> None:
    broker, url = metered
    status, ctype, body = get(url + "/health")
    report = json.loads(body)
    assert status == 200 and ctype == "application/json" and report["healthy"] is True and report["reasons"] == []
    with Client(broker.endpoint, heartbeat=False) as c:
        assert report["broker_id"] == c.hello()["broker_id"]
    assert get(url + "/metrics?x=1")[0] == 200
    assert get(url + "/")[0] == 404 and get(url + "/metricsx")[0] == 404
    req = urllib.request.Request(url + "/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    exc.value.close()  # the refusal holds the connection
    assert exc.value.code == 405 and exc.value.headers["Allow"] == "GET"


# ------------------------------------------------------------------ the loop's side, in process
@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[Any]:
    from zmesh.broker.loop import Broker

    cfg = BrokerConfig.load(env={}, data=str(tmp_path / "d"), bind=[f"tcp://127.0.0.1:{free_port()}"],
                            pub_bind=[f"tcp://127.0.0.1:{free_port()}"], ipc=False, discovery=False,
                            metrics="127.0.0.1:0")
    b = Broker(cfg)
    b.bind()
    try:
        yield b
    finally:
        b.close()


def _metrics_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "zmesh-metrics"]


def test_a_loop_that_does_not_answer_is_503(in_process: Any) -> None:
    url = in_process.metrics_url  # bound, but serve() never runs: nobody takes snapshots
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url) and not url.endswith(":0")
    status, _, body = get(url + "/metrics")
    assert status == 503 and f"did not answer within {ANSWER_TIMEOUT_S:g} s" in body
    status, _, body = get(url + "/health")
    report = json.loads(body)
    assert status == 503 and report["healthy"] is False and report["reasons"][0].startswith("loop: ")
    assert report["broker_id"] == in_process.store.broker_id


def test_the_loop_answers_and_close_stops_the_endpoint(in_process: Any) -> None:
    url = in_process.metrics_url
    loop = threading.Thread(target=in_process.serve, kwargs={"install_signals": False})
    loop.start()
    try:
        status = wait_for(lambda: get(url + "/metrics")[0] == 200, what="a scrape answered by the loop")
        assert status
    finally:
        in_process.stop()
        loop.join(30)
    assert not loop.is_alive() and not _metrics_threads()
    with pytest.raises(OSError):  # nothing listens any more
        urllib.request.urlopen(url + "/metrics", timeout=5)


def test_a_taken_metrics_address_fails_the_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "zmesh", "broker", "--data", str(tmp_path / "d"), "--no-discovery",
             "--bind", f"tcp://127.0.0.1:{free_port()}", "--pub-bind", f"tcp://127.0.0.1:{free_port()}",
             "--metrics", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("zmesh: ")]
    assert len(errors) == 1 and errors[0].startswith("zmesh: bind: ") and f"127.0.0.1:{port}" in errors[0], r.stderr
    assert "Traceback" not in r.stderr


# ------------------------------------------------------------------ metrics_token
TOKEN = "scrape-token-0123456789abcdef"


def _get_with(url: str, authorization: str | None) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, headers={} if authorization is None else {"Authorization": authorization})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def _token_config(tmp_path: Path, token: str, mode: int = 0o600) -> Path:
    file = tmp_path / "metrics.token"
    file.write_text(f"# the scrape token\n{token}\n")
    file.chmod(mode)
    config = tmp_path / "zmesh.toml"
    config.write_text(f'[broker]\nmetrics_token = "{file}"\n')
    return config


def test_a_metrics_token_guards_metrics_and_leaves_health_open(
        broker_factory: Callable[..., BrokerProcess], tmp_path: Path) -> None:
    config = _token_config(tmp_path, TOKEN)
    b = broker_factory(extra=("--metrics", "127.0.0.1:0", "--config", str(config)))
    base = metrics_url(b)
    for auth in (None, "Bearer wrong-token-0123456789", f"Basic {TOKEN}", f"Bearer {TOKEN}x"):
        status, headers, body = _get_with(base + "/metrics", auth)
        assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer"), (auth, status)
        assert "metrics_token" in body and "zmesh_" not in body
    status, _headers, body = _get_with(base + "/metrics", f"Bearer {TOKEN}")
    assert status == 200 and "zmesh_requests_total" in body
    names, _samples = parse(body)
    assert "zmesh_event_seq" in names
    status, _headers, body = _get_with(base + "/health", None)
    assert status == 200 and json.loads(body)["healthy"] is True
    refused = [line for line in b.log().splitlines() if "metrics scrape from 127.0.0.1 refused" in line]
    assert len(refused) == 1, b.log()  # four refusals, one line: rate-limited per peer


@pytest.mark.parametrize("token,mode,says", [
    (TOKEN, 0o644, "can be read by others"),
    ("short", 0o600, "at least 16 printable characters"),
    (f"{TOKEN} {TOKEN}", 0o600, "at least 16 printable characters"),
])
def test_a_bad_metrics_token_file_fails_the_start_naming_it(tmp_path: Path, token: str, mode: int, says: str) -> None:
    config = _token_config(tmp_path, token, mode)
    r = subprocess.run(
        [sys.executable, "-m", "zmesh", "broker", "--data", str(tmp_path / "d"), "--no-discovery",
         "--bind", f"tcp://127.0.0.1:{free_port()}", "--pub-bind", f"tcp://127.0.0.1:{free_port()}",
         "--metrics", "127.0.0.1:0", "--config", str(config)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("zmesh: ")]
    assert len(errors) == 1 and "metrics_token" in errors[0] and says in errors[0], r.stderr
    assert "Traceback" not in r.stderr
