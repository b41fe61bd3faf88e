"""Issue 18, the audit trail in the core (zmesh/core/audit.py): what each mode records, the
fields of a record, the query's filters and paging under its scan limit, retention at its
bound (also after the bound was lowered and the broker started again), and records of a
rolled-back batch that are not kept. A hypothesis test holds the query to a plain Python
model of the trail for random sequences of requests.

Driven as the broker drives the core (tests/test_core.py's Harness, memory and LMDB
stores): a refused request is caught inside its transaction, which then commits what the
core kept (its audit record)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import hypothesis.strategies as st
import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from zmesh import protocol
from zmesh.core import DEFERRED, Settings
from zmesh.core.audit import key_fingerprint
from zmesh.protocol.identity import ACTORS
from zmesh.core.eventlog import all_counters
from zmesh.core.schema import COUNTER, parse_audit_key
from zmesh.errors import WIRE_ERRORS, BadRequest, Conflict, RemoteError
from zmesh.protocol.ops.audit import AUDIT_SCAN_LIMIT, RESULTS
from zmesh.store import MemoryStore

from .test_core import WALL0, Harness

KEY = "K" * 40  # a Z85 client key, as ZAP hands it over
RECORD_KEYS = {"id", "ts", "op", "agent", "task", "result", "seq", "key", "role"}


def harness(kind: str, path: Path, mode: str = "writes", retention: int = 1000) -> Harness:
    return Harness(kind, path, Settings(default_ttl=10.0, event_log_size=1000, audit=mode, audit_retention=retention))


@pytest.fixture(params=["memory", "lmdb"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def h(kind: str, tmp_path: Path) -> Iterator[Harness]:
    made = harness(kind, tmp_path / "db")
    yield made
    made.close()


def send(h: Harness, op: str, /, *, key: str | None = None, role: str | None = None, **body: Any) -> Any:
    """One request in its own transaction, as the broker sends it: the reply, or the
    RemoteError it was refused with (the transaction commits either way)."""
    validated = protocol.validate(protocol.OPS[op], body)
    with h.store.write() as txn:
        b = h.core.batch(txn, h.now())
        b.key, b.role = key, role
        try:
            reply, events = h.core.handle(b, op, validated)
        except RemoteError as exc:
            h.events += b.events
            return exc
    h.events += events
    return reply


def ok(h: Harness, op: str, /, **body: Any) -> Any:
    reply = send(h, op, **body)
    assert not isinstance(reply, RemoteError), reply
    return reply


def trail(h: Harness) -> list[dict[str, Any]]:
    """Every stored record, oldest first, read from the store (reading it records nothing)."""
    with h.store.read() as txn:
        return sorted((orjson.loads(v) | {"_key": parse_audit_key(k)} for k, v in txn.scan("audit")),
                      key=lambda r: r["_key"])


def ids(records: list[dict[str, Any]]) -> list[int]:
    return [r["id"] for r in records]


def last_seq(h: Harness) -> int:
    with h.store.read() as txn:
        return h.core.last_seq(txn)


def query(h: Harness, **body: Any) -> dict[str, Any]:
    reply = send(h, "audit", **body)
    assert not isinstance(reply, RemoteError), reply
    return reply  # type: ignore[no-any-return]


# ---------------------------------------------------------------- what is recorded
def test_writes_mode_records_writes_and_refusals_with_their_fields(h: Harness) -> None:
    h.at(1.0)
    ok(h, "task_create", id="t1")
    seq_created = last_seq(h)
    h.at(2.0)
    claim = ok(h, "claim", task="t1", agent="w1")
    seq_claimed = last_seq(h)
    h.at(3.0)
    assert send(h, "claim", task="t1", agent="w2").code == "conflict"
    assert send(h, "complete", task="t1", agent="w1", token=claim["token"] + 1).code == "stale_token"
    ok(h, "task_get", task="t1")  # a read that answers: not recorded
    ok(h, "status")
    ok(h, "heartbeat", agent="w1")  # a heartbeat writes nothing durable: not recorded
    ok(h, "renew", task="t1", agent="w1")  # nor does a renew
    h.at(4.0)
    assert send(h, "task_get", task="nope").code == "not_found"  # a refused read is recorded
    ok(h, "task_create", id="t2")
    h.at(5.0)
    assert ok(h, "claim_next", agent="w3")["task"] == "t2"  # the task it took is the record's
    assert ok(h, "claim_next", agent="w3") is None
    ok(h, "send", **{"from": "w1", "to": "w3", "subject": "hi"})  # the acting agent is the sender
    records = trail(h)
    assert all(set(r) == RECORD_KEYS | {"_key"} and r["_key"] == r["id"] for r in records)
    assert [(r["op"], r["agent"], r["task"], r["result"]) for r in records] == [
        ("task_create", None, "t1", "ok"), ("claim", "w1", "t1", "ok"), ("claim", "w2", "t1", "conflict"),
        ("complete", "w1", "t1", "stale_token"), ("task_get", None, "nope", "not_found"),
        ("task_create", None, "t2", "ok"), ("claim_next", "w3", "t2", "ok"), ("claim_next", "w3", None, "ok"),
        ("send", "w1", None, "ok")]
    assert ids(records) == list(range(1, 10))
    assert [r["ts"] for r in records] == [WALL0 + t for t in (1, 2, 3, 3, 4, 4, 5, 5, 5)]
    assert (records[0]["seq"], records[1]["seq"]) == (seq_created, seq_claimed)
    assert records[2]["seq"] == seq_claimed  # a refusal appends no event: the seq it saw
    assert records[-1]["seq"] == last_seq(h)
    assert {(r["key"], r["role"]) for r in records} == {(None, None)}  # security off


def test_a_refused_request_writes_its_record_and_nothing_else(h: Harness) -> None:
    ok(h, "task_create", id="t1")
    ok(h, "claim", task="t1", agent="w1")
    before = h.raw()
    assert send(h, "claim", task="t1", agent="w2").code == "conflict"
    after = h.raw()
    assert {t for t in before if before[t] != after[t]} == {"audit", "events"}
    changed = dict(set(after["events"]) - set(before["events"]))
    assert set(changed) == {COUNTER + b"audit"}  # the audit id counter, and no event
    assert len(after["audit"]) == len(before["audit"]) + 1


def test_off_records_nothing(kind: str, tmp_path: Path) -> None:
    h = harness(kind, tmp_path / "db", mode="off")
    ok(h, "task_create", id="t1")
    ok(h, "claim", task="t1", agent="w1")
    h.refused(Conflict, "claim", task="t1", agent="w2")  # wrote nothing at all
    assert send(h, "task_get", task="nope").code == "not_found"
    assert trail(h) == [] and query(h) == {"records": [], "next": None}
    assert "audit" not in h.inspect().counters
    h.close()


def test_all_records_reads_and_heartbeats_too(kind: str, tmp_path: Path) -> None:
    h = harness(kind, tmp_path / "db", mode="all")
    ok(h, "register", agent="w1")
    ok(h, "heartbeat", agent="w1")
    ok(h, "task_create", id="t1")
    ok(h, "task_get", task="t1")
    ok(h, "status")
    assert send(h, "heartbeat", agent="ghost").code == "lease_expired"
    first = query(h, limit=10)  # the query itself is a read: recorded after it answered
    assert [(r["op"], r["agent"], r["task"], r["result"]) for r in reversed(first["records"])] == [
        ("register", "w1", None, "ok"), ("heartbeat", "w1", None, "ok"), ("task_create", None, "t1", "ok"),
        ("task_get", None, "t1", "ok"), ("status", None, None, "ok"), ("heartbeat", "ghost", None, "lease_expired")]
    assert [r["op"] for r in query(h, limit=1)["records"]] == ["audit"]
    h.close()


def test_the_key_fingerprint_and_role_are_recorded_and_agents_may_not_query(h: Harness) -> None:
    ok(h, "task_create", id="t1")
    send(h, "claim", key=KEY, role="agent", task="t1", agent="w1")
    forbidden = send(h, "audit", key=KEY, role="agent")
    assert forbidden.code == "forbidden" and "observer and admin keys" in str(forbidden)
    assert send(h, "task_create", key="O" * 40, role="observer", id="t9").code == "forbidden"
    seen = send(h, "audit", key="A" * 40, role="observer")
    assert [(r["op"], r["result"], r["key"], r["role"]) for r in seen["records"]] == [
        ("task_create", "forbidden", key_fingerprint("O" * 40), "observer"),
        ("audit", "forbidden", key_fingerprint(KEY), "agent"),
        ("claim", "ok", key_fingerprint(KEY), "agent"), ("task_create", "ok", None, None)]
    assert send(h, "audit", key="A" * 40, role="admin") == seen  # an admin reads the same
    # the live events stay: each refusal for a key is also an audit.refused event, as before
    assert [(e.body["op"], e.body["key"]) for e in h.events if e.topic == "audit.refused"] == [
        ("audit", key_fingerprint(KEY)), ("task_create", key_fingerprint("O" * 40))]


def test_a_waiting_reserve_is_recorded_when_it_queues_and_when_it_is_answered(h: Harness) -> None:
    ok(h, "reserve", agent="w1", paths=["src/**"])
    with h.store.write() as txn:
        b = h.core.batch(txn, h.now())
        b.request_id, b.ticket, b.key, b.role = b"r1", "ticket-1", KEY, "agent"
        reply, _ = h.core.handle(b, "reserve", protocol.validate(protocol.OPS["reserve"], {
            "agent": "w2", "paths": ["src/x.py"], "wait_s": 30}))
    assert reply is DEFERRED
    ok(h, "release_paths", agent="w1")
    with h.store.write() as txn:
        b = h.core.batch(txn, h.now())
        h.core.expire(b)
        assert [ticket for ticket, _ in b.answers] == ["ticket-1"]
    assert [(r["op"], r["agent"], r["result"], r["key"], r["role"]) for r in trail(h)] == [
        ("reserve", "w1", "ok", None, None), ("reserve", "w2", "waiting", key_fingerprint(KEY), "agent"),
        ("release_paths", "w1", "ok", None, None), ("reserve", "w2", "ok", key_fingerprint(KEY), "agent")]


# ---------------------------------------------------------------- the query
def workload(h: Harness) -> list[dict[str, Any]]:
    """Requests over five seconds of wall clock; returns the trail, oldest first."""
    for second, task in enumerate(("t1", "t2", "t3", "t4", "t5"), start=1):
        h.at(float(second))
        ok(h, "task_create", id=task)
        agent = "w1" if second % 2 else "w2"
        ok(h, "claim", task=task, agent=agent)
        send(h, "claim", task=task, agent="w3")  # conflict
    return trail(h)


def test_filters_return_exactly_the_matching_records_newest_first(h: Harness) -> None:
    everything = workload(h)
    newest = [r | {} for r in reversed(everything)]
    for r in newest:
        del r["_key"]

    def expect(**match: Any) -> list[dict[str, Any]]:
        return [r for r in newest if all(r[k] == v for k, v in match.items())]

    assert query(h, limit=100) == {"records": newest, "next": None}
    assert query(h, agent="w1")["records"] == expect(agent="w1")
    assert query(h, task="t3")["records"] == expect(task="t3")
    assert query(h, op="claim")["records"] == expect(op="claim")
    assert query(h, result="conflict")["records"] == expect(result="conflict") and len(expect(result="conflict")) == 5
    assert query(h, op="claim", result="ok", agent="w2")["records"] == expect(op="claim", result="ok", agent="w2")
    assert query(h, since=WALL0 + 4)["records"] == [r for r in newest if r["ts"] >= WALL0 + 4]
    assert query(h, since=WALL0 + 4, agent="w3")["records"] == expect(agent="w3")[:2]
    assert query(h, agent="nobody") == {"records": [], "next": None}
    assert query(h, before=5)["records"] == [r for r in newest if r["id"] < 5]
    assert query(h, before=10**9)["records"] == newest  # a cursor past the newest is the newest
    page = query(h, limit=4)
    assert page == {"records": newest[:4], "next": newest[3]["id"]}
    assert query(h, limit=4, before=page["next"])["records"] == newest[4:8]


def test_bad_query_fields_are_refused_naming_the_field() -> None:
    spec = protocol.OPS["audit"]
    for body, field in (({"op": "nope"}, "op"), ({"result": "maybe"}, "result"), ({"limit": 0}, "limit"),
                        ({"limit": protocol.MAX_LIST_LIMIT + 1}, "limit"), ({"before": 0}, "before"),
                        ({"since": -1}, "since"), ({"since": float("nan")}, "since"), ({"agent": ""}, "agent"),
                        ({"task": "a\nb"}, "task"), ({"bogus": 1}, "bogus")):
        with pytest.raises(BadRequest) as info:
            protocol.validate(spec, body)
        assert info.value.details["field"] == field, body
    assert set(spec.by_name["op"].choices) == set(protocol.OPS)
    assert set(RESULTS) == {"ok", "waiting", *WIRE_ERRORS}


def test_one_request_examines_at_most_the_scan_limit_and_next_goes_on(h: Harness) -> None:
    assert h.core.audit.scan_limit == AUDIT_SCAN_LIMIT
    newest = list(reversed(workload(h)))  # 15 records: 10 ok, 5 conflicts
    h.core.audit.scan_limit = 4
    pages, before = [], None
    while True:
        page = query(h, result="conflict", before=before)
        pages.append(page)
        start = newest[0]["id"] if before is None else before - 1
        end = page["next"] if page["next"] is not None else 1
        assert start - end + 1 <= 4  # examined
        if page["next"] is None:
            break
        before = page["next"]
    assert [p["next"] for p in pages] == [12, 8, 4, None]
    assert [r["id"] for p in pages for r in p["records"]] == [r["id"] for r in newest if r["result"] == "conflict"]
    assert [len(p["records"]) for p in pages] == [2, 1, 1, 1]  # a page may hold fewer than limit


def test_next_is_null_when_the_last_record_filled_the_page(h: Harness) -> None:
    workload(h)
    assert query(h, limit=15)["next"] is None  # all 15: nothing older left
    assert query(h, limit=14)["next"] == 2


# ---------------------------------------------------------------- retention
def test_retention_trims_at_exactly_its_bound(kind: str, tmp_path: Path) -> None:
    h = harness(kind, tmp_path / "db", retention=5)
    for i in range(12):
        ok(h, "task_create", id=f"t{i}")
        kept = trail(h)
        assert ids(kept) == list(range(max(1, i - 3), i + 2))  # never more than 5
    assert [r["task"] for r in query(h)["records"]] == [f"t{i}" for i in range(11, 6, -1)]
    # the bound lowered: the next start cuts the trail to it, appends keep it there
    h.settings.audit_retention = 2
    assert h.restart(50.0).trimmed_audit == 3
    assert ids(trail(h)) == [11, 12]
    ok(h, "task_create", id="t12")
    assert ids(trail(h)) == [12, 13]
    # raised again: nothing comes back, and the trail grows to the new bound
    h.settings.audit_retention = 4
    assert h.restart(60.0).trimmed_audit == 0
    for i in range(13, 17):
        ok(h, "task_create", id=f"t{i}")
    assert ids(trail(h)) == [14, 15, 16, 17]
    h.close()


def test_a_bound_lowered_while_running_hides_what_is_past_it_until_the_next_start(h: Harness) -> None:
    for i in range(6):
        ok(h, "task_create", id=f"t{i}")
    h.settings.audit_retention = 2
    ok(h, "task_create", id="t6")  # id 7 deletes id 5 only: 1..4 stay until a start
    assert ids(trail(h)) == [1, 2, 3, 4, 6, 7]
    assert [r["id"] for r in query(h)["records"]] == [7, 6]  # the query stops at the gap
    assert h.restart(10.0).trimmed_audit == 4
    assert ids(trail(h)) == [6, 7]


def test_records_of_a_rolled_back_batch_are_not_kept(h: Harness) -> None:
    ok(h, "task_create", id="t1")
    before = h.raw()
    with pytest.raises(RuntimeError):
        with h.store.write() as txn:
            b = h.core.batch(txn, h.now())
            h.core.handle(b, "claim", protocol.validate(protocol.OPS["claim"], {"task": "t1", "agent": "w1"}))
            try:
                h.core.handle(b, "task_get", {"task": "nope"})
            except RemoteError:
                pass
            raise RuntimeError("the batch fails after its requests")
    with h.store.read() as txn:
        h.core.resync(txn, h.now())
    assert h.raw() == before
    ok(h, "claim", task="t1", agent="w1")
    assert ids(trail(h)) == [1, 2]  # gap-free: the rolled-back ids are given again


# ---------------------------------------------------------------- a model of the trail
AGENTS = ("a1", "a2")
TASKS = ("t1", "t2", "t3")
REQUESTS = st.one_of(
    st.builds(lambda t: ("task_create", {"id": t}), st.sampled_from(TASKS)),
    st.builds(lambda t, a: ("claim", {"task": t, "agent": a}), st.sampled_from(TASKS + ("t9",)),
              st.sampled_from(AGENTS)),
    st.builds(lambda t, a, tok: ("complete", {"task": t, "agent": a, "token": tok}), st.sampled_from(TASKS),
              st.sampled_from(AGENTS), st.integers(1, 8)),
    st.builds(lambda t, a: ("release", {"task": t, "agent": a}), st.sampled_from(TASKS), st.sampled_from(AGENTS)),
    st.builds(lambda a: ("claim_next", {"agent": a}), st.sampled_from(AGENTS)),
    st.builds(lambda a: ("heartbeat", {"agent": a}), st.sampled_from(AGENTS)),
    st.builds(lambda t: ("task_get", {"task": t}), st.sampled_from(TASKS + ("t9",))),
    st.just(("status", {})),
    st.builds(lambda a: ("audit", {"agent": a}), st.sampled_from(AGENTS)),
)


def filters(times: list[float]) -> st.SearchStrategy[dict[str, Any]]:
    """Query filters; ``since`` is mostly the time of a record (the boundary is what matters)."""
    return st.fixed_dictionaries({}, optional={
        "agent": st.sampled_from(AGENTS), "task": st.sampled_from(TASKS + ("t9",)),
        "op": st.sampled_from(("task_create", "claim", "complete", "claim_next", "heartbeat", "audit")),
        "result": st.sampled_from(("ok", "conflict", "not_found", "stale_token", "not_owner", "lease_expired")),
        "since": st.sampled_from(times) if times else st.just(WALL0)})


class Model:
    """The trail as the rules say it is: which requests make a record, with what."""

    def __init__(self, mode: str, retention: int) -> None:
        self.mode, self.retention = mode, retention
        self.records: list[dict[str, Any]] = []
        self.last_id = 0

    def request(self, op: str, body: dict[str, Any], reply: Any, wall: float, seq: int) -> None:
        refused = isinstance(reply, RemoteError)
        if self.mode == "off" or (self.mode == "writes" and not refused and op not in protocol.WRITE_OPS):
            return
        task = body.get("id") if op == "task_create" else body.get("task")
        if op == "claim_next" and reply is not None:
            task = reply["task"]
        self.last_id += 1
        self.records.append({"id": self.last_id, "ts": wall, "op": op, "agent": body.get(ACTORS.get(op, "agent")),
                             "task": task, "result": reply.code if refused else "ok", "seq": seq, "key": None,
                             "role": None})
        self.records = self.records[-self.retention:]

    def answer(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for r in reversed(self.records):
            if "since" in filters and r["ts"] < filters["since"]:
                break
            if all(r[k] == v for k, v in filters.items() if k != "since"):
                out.append(r)
        return out


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(("writes", "writes", "all", "all", "off")), retention=st.integers(1, 12),
       scan_limit=st.integers(1, 6), requests=st.lists(st.tuples(REQUESTS, st.integers(0, 1)), min_size=1, max_size=30),
       data=st.data())
def test_the_query_answers_what_a_model_of_the_trail_says(mode: str, retention: int, scan_limit: int,
                                                          requests: list[Any], data: st.DataObject) -> None:
    h = harness("memory", Path("unused"), mode=mode, retention=retention)
    assert isinstance(h.store, MemoryStore)
    h.core.audit.scan_limit = scan_limit
    model = Model(mode, retention)
    clock = 1.0
    for (op, body), tick in requests:
        clock += tick
        h.at(clock)
        reply = send(h, op, **body)
        model.request(op, protocol.validate(protocol.OPS[op], body), reply, h.now().wall, last_seq(h))
    assert [{k: v for k, v in r.items() if k != "_key"} for r in trail(h)] == model.records
    h.core.settings.audit = "off"  # the queries below leave the trail as the model has it
    times = sorted({r["ts"] for r in model.records} | {WALL0 + clock + 1})
    for _ in range(3):
        wanted = data.draw(filters(times), label="filters")
        limit = data.draw(st.integers(1, 5), label="limit")
        found: list[dict[str, Any]] = []
        before, pages = None, 0
        while True:
            page = query(h, **wanted, before=before, limit=limit)
            assert len(page["records"]) <= limit
            found += page["records"]
            pages += 1
            if page["next"] is None:
                break
            start = model.last_id if before is None else before - 1
            assert start - page["next"] + 1 <= scan_limit, "examined more than the scan limit"
            assert page["next"] < (before or model.last_id + 1), "paging does not move on"
            before = page["next"]
        assert found == model.answer(wanted), (wanted, limit)


def test_an_admin_op_that_writes_no_record_is_recorded_in_writes_mode(h: Harness) -> None:
    """`backup` changes nothing in the store, yet it is an operator's action: the trail has it
    (the core's part of a backup; the broker makes the copy), and a read beside it is not."""
    ok(h, "status")
    ok(h, "backup", dest="/var/backups/zmesh/one")
    assert [(r["op"], r["result"]) for r in trail(h)] == [("backup", "ok")]


# --------------------------------------------------------------------------- the layout
def test_records_sit_newest_first_right_after_the_counters_and_out_of_the_events_scans(tmp_path: Path) -> None:
    """The page the audit costs: a record's LMDB key follows the counters (so it lands on the
    leaf the write's event and counters dirty), newest first; no scan of the events table
    (the event log, the counters) ever sees one."""
    h = harness("lmdb", tmp_path / "db", retention=5)
    for n in range(8):
        ok(h, "task_create", id=f"t{n}")
    store: Any = h.store
    with store.env.begin() as raw:
        keys = [bytes(k) for k, _ in raw.cursor() if k[:1] == b"\x17"]  # the events table's range, physically
    seqs = [k for k in keys if k[1:2] != COUNTER]
    counters = [k for k in keys if k[1:2] == COUNTER and k[2:3] != COUNTER]
    audit = [k for k in keys if k[1:3] == COUNTER * 2]
    assert keys == seqs + counters + audit  # events, then counters, then the trail
    assert [parse_audit_key(k[3:]) for k in audit] == [8, 7, 6, 5, 4]  # newest first; retention kept 5
    with h.store.read() as txn:
        assert all(not k.startswith(COUNTER * 2) for k, _ in txn.scan("events"))
        assert set(all_counters(txn)) == {k[2:].decode() for k in counters} and "audit" in all_counters(txn)
        back = [bytes(k) for k, _ in txn.scan_back("events", COUNTER)]
        assert back == [k[1:] for k in reversed(counters)]
        assert [parse_audit_key(k) for k, _ in txn.scan("audit")] == [8, 7, 6, 5, 4]
    assert [r["id"] for r in query(h)["records"]] == [8, 7, 6, 5, 4]
    h.close()
