"""The acceptance scenarios of the broker, each against real processes:
race (8 OS processes, 1,000 tasks), agent crash (SIGKILL), broker crash (SIGKILL mid-load),
and a few thousand malformed messages on the ROUTER socket."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import orjson
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmesh import Client, Unreachable
from zmesh import protocol
from zmesh.testing import ping

from .conftest import wait_for

RACER = r"""
import json, sys, zmesh
endpoint, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = zmesh.Client(endpoint, agent=name, ttl=120, timeout=60).connect()
print("ready", flush=True)
sys.stdin.readline()  # the start barrier: every racer begins at once
wins = {}
for i in range(n):
    claim = c.claim(f"t{i}")
    if claim is not None:
        wins[f"t{i}"] = claim.token
c.close(unregister=False)  # keep the claims so the parent can check the owners
print(json.dumps(wins), flush=True)
"""


@pytest.mark.slow
def test_race_eight_processes_one_winner_per_task(broker, procs) -> None:
    n, racers = 1000, 8
    with Client(broker.endpoint, timeout=30) as admin:
        for i in range(n):
            admin.create_task(f"t{i}")
        before = admin.status()
        ps = [procs.python(RACER, broker.endpoint, f"racer{k}", str(n)) for k in range(racers)]
        for p in ps:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for p in ps:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in ps:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
        winners: dict[str, list[tuple[str, int]]] = {}
        for k, wins in enumerate(results):
            for task, token in wins.items():
                winners.setdefault(task, []).append((f"racer{k}", token))
        assert len(winners) == n, "every task was won"
        assert all(len(w) == 1 for w in winners.values()), "exactly one winner per task"
        tokens = [w[0][1] for w in winners.values()]
        assert len(set(tokens)) == n, "every win has its own fencing token"
        assert sum(1 for wins in results if wins) > 1, "the racers really raced"
        after = admin.status()
        requests, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
        assert requests >= n * racers
        assert batches < requests, "group commit: concurrent requests share transactions"
        for task, [(owner, token)] in winners.items():
            view = admin.task(task)
            assert (view["status"], view["owner"], view["token"]) == ("claimed", owner, token)


VICTIM = r"""
import sys, zmesh
c = zmesh.Client(sys.argv[1], agent="victim", ttl=float(sys.argv[2])).connect()
for i in range(5):
    c.claim(f"v{i}")
print("holding", flush=True)
sys.stdin.readline()
"""


def test_killed_agent_frees_its_claims_within_ttl_plus_one_second(broker, procs) -> None:
    ttl = 2.0
    with Client(broker.endpoint, agent="survivor", ttl=10) as c:
        for i in range(5):
            c.create_task(f"v{i}")
        p = procs.python(VICTIM, broker.endpoint, str(ttl))
        assert p.stdout.readline().strip() == "holding", p.stderr.read()
        assert all(c.task(f"v{i}")["owner"] == "victim" for i in range(5))
        seq_before = c.status()["seq"]
        os.kill(p.pid, signal.SIGKILL)
        killed = time.monotonic()
        p.wait(10)
        wait_for(lambda: all(c.task(f"v{i}")["status"] == "available" for i in range(5)),
                 timeout=ttl + 5, interval=0.02, what="claims released")
        elapsed = time.monotonic() - killed
        assert elapsed <= ttl + 1.0, f"claims freed after {elapsed:.2f} s (TTL {ttl} s)"
        for i in range(5):
            assert c.claim(f"v{i}") is not None, "claimable again"
        events = c.replay(seq_before)["events"]
        released = [e for e in events if e["topic"] == "task.released"]
        assert {e["body"]["task_id"] for e in released} == {f"v{i}" for i in range(5)}
        assert all(e["body"]["reason"] == "lease_expired" and e["body"]["agent"] == "victim"
                   for e in released)
        expired = [e for e in events if e["topic"] == "agent.expired"]
        assert len(expired) == 1 and expired[0]["body"]["agent"] == "victim"
        assert sorted(expired[0]["body"]["released"]) == [f"v{i}" for i in range(5)]


CLAIMER = r"""
import sys, zmesh
endpoint, name, log, start, step, n = sys.argv[1], sys.argv[2], sys.argv[3], *map(int, sys.argv[4:7])
c = zmesh.Client(endpoint, agent=name, ttl=300, timeout=3, heartbeat=False).connect()
with open(log, "a") as out:
    for i in range(start, n, step):
        try:
            claim = c.claim(f"d{i}")
        except zmesh.Unreachable:
            break
        if claim is not None:  # acknowledged: only now may it be recorded
            out.write(f"d{i} {name} {claim.token}\n")
            out.flush()
"""


@pytest.mark.slow
def test_broker_sigkill_mid_load_loses_no_acknowledged_claim(broker, procs, tmp_path: Path) -> None:
    n, workers = 4000, 4
    with Client(broker.endpoint, timeout=30) as admin:
        for i in range(n):
            admin.create_task(f"d{i}")
        seen: list[int] = []
        stop = threading.Event()

        def follow() -> None:
            try:
                for ev in admin_events.events(since=0, idle_check=0.2):
                    seen.append(ev.seq)
                    if stop.is_set():
                        return
            except Unreachable:  # the broker was killed under it
                pass

        admin_events = Client(broker.endpoint, timeout=2)
        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        logs = [tmp_path / f"acks{k}.log" for k in range(workers)]
        ps = [procs.python(CLAIMER, broker.endpoint, f"w{k}", str(logs[k]), str(k), str(workers), str(n))
              for k in range(workers)]

        def acked() -> int:
            return sum(len(log.read_text().splitlines()) for log in logs if log.exists())

        wait_for(lambda: acked() >= 600, timeout=60, what="claims under way")
        broker.kill()  # SIGKILL in the middle of the claim load
        for p in ps:
            p.communicate(timeout=30)
        stop.set()
        admin_events.close()
        follower.join(10)
        acks = [line.split() for log in logs for line in log.read_text().splitlines()]
        assert len(acks) >= 600
        max_seen_seq = max(seen)

        broker.start()
        claimed = admin.tasks(status="claimed", limit=10_000)
        owners = {t["id"]: (t["owner"], t["token"]) for t in claimed}
        for task, agent, token in acks:
            assert owners.get(task) == (agent, int(token)), f"acknowledged claim {task} lost"
        assert len({tok for _, tok in owners.values()}) == len(owners), "no token held twice"
        assert admin.status()["claims"] == len(owners) == len(claimed)
        max_token = max(int(t) for _, _, t in acks)
        admin.create_task("after-restart")
        claim = admin.claim("after-restart", agent="checker")
        assert claim.token > max_token, "fencing tokens keep increasing across the crash"
        log = []
        since = 0
        while True:
            page = admin.replay(since, limit=10_000)
            log += [e["seq"] for e in page["events"]]
            since = log[-1] if log else since
            if not page["more"]:
                break
        assert log == list(range(1, len(log) + 1)), "event sequence is gap-free"
        assert log[-1] > max_seen_seq, "event sequence keeps increasing across the crash"


# ---------------------------------------------------------------- fuzz
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=8,
)
_field_names = sorted({f.name for op in protocol.OPS.values() for f in op.fields} | {"bogus"})
_bodies = st.one_of(
    st.binary(max_size=80),
    st.sampled_from([b'{"task": 99999999999999999999999, "agent": "a"}', b"1e400", b'{"ttl": 1e400}',
                     b'{"id": "\\ud800"}', b'{"a": 1, "a": 2}', b"[" * 500, b'"' + b"\\" * 3]),
    _json.map(orjson.dumps),
    st.dictionaries(st.sampled_from(_field_names), _json, max_size=6).map(orjson.dumps),
)


def _header(version: bytes, op: bytes, op_len: int | None, req_id: bytes) -> bytes:
    """A request header, with the op length byte sometimes lying."""
    return version + bytes(((len(op) if op_len is None else op_len) % 256,)) + op + req_id


_messages = st.one_of(
    st.lists(st.binary(max_size=40), min_size=1, max_size=7),
    st.tuples(
        st.builds(
            _header,
            st.sampled_from([b"ZM1", b"ZM1", b"ZM1", b"ZM2", b"", b"zm1"]),
            st.sampled_from([op.encode() for op in protocol.OPS] + [b"", b"nope", b"\xff", b"x" * 40]),
            st.one_of(st.none(), st.none(), st.none(), st.integers(0, 255)),
            st.binary(min_size=0, max_size=70),
        ),
        _bodies,
    ).map(list),
    st.lists(st.binary(max_size=40), min_size=0, max_size=3).flatmap(
        lambda extra: st.tuples(st.just(_header(b"ZM1", b"hello", None, b"r")), _bodies).map(lambda t: [*t, *extra])),
)


@pytest.mark.slow
def test_malformed_messages_get_an_error_reply_and_the_broker_survives(broker) -> None:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(broker.endpoint)
    counts = {"ok": 0, "error": 0}

    @settings(max_examples=3000, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(_messages)
    def check(frames: list[bytes]) -> None:
        sock.send_multipart(frames)
        assert sock.poll(5000), f"no reply to {frames!r}"
        reply = protocol.decode_reply(sock.recv_multipart())  # raises on a malformed reply
        if not reply.ok:
            assert reply.body["code"] in {"bad_request", "unknown_op", "unsupported_version", "too_large",
                                          "not_found", "conflict", "not_owner", "stale_token",
                                          "lease_expired", "claim_expired", "snapshot_required"}, reply.body
            assert reply.body["message"]
        counts["ok" if reply.ok else "error"] += 1

    try:
        check()
        # too large in total (each frame below the per-frame limit): an error reply
        half = b"x" * (protocol.MAX_MESSAGE_BYTES // 2 + 10)
        sock.send_multipart([_header(b"ZM1", b"hello", None, b"r"), half, half])
        assert sock.poll(5000)
        assert protocol.decode_reply(sock.recv_multipart()).body["code"] == "too_large"
        # one frame above the message limit (below the frame cut-off): read, answered, logged
        sock.send_multipart([_header(b"ZM1", b"hello", None, b"r"), b"y" * (protocol.MAX_MESSAGE_BYTES + 1)])
        assert sock.poll(5000)
        assert protocol.decode_reply(sock.recv_multipart()).body["code"] == "too_large"
        # a frame above the cut-off: libzmq drops it and disconnects that peer, no reply
        sock.send_multipart([_header(b"ZM1", b"hello", None, b"r"), b"y" * (protocol.MAX_FRAME_BYTES + 1)])
        assert not sock.poll(500)
    finally:
        sock.close(0)
    # the broker said what it refused, naming the peer, without a line per bad message
    refusals = [line for line in broker.log().splitlines() if "refused a request from 127.0.0.1" in line]
    assert refusals and len(refusals) < 100, broker.log()[-3000:]
    assert counts["error"] > 1000 and sum(counts.values()) >= 3000
    assert broker.proc.poll() is None, "the broker is alive"
    assert ping(broker.endpoint, 2.0) is not None
    with Client(broker.endpoint) as c:
        c.create_task("still-works")
        assert c.claim("still-works", agent="a") is not None
