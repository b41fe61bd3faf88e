"""The broker sends nothing a journal flush does not cover (zmesh/broker/loop.py _settle): at
``full`` a reply, an event or a push leaves only once the batch's record is on disk, whether
the loop flushed itself (nothing else waiting) or the store's flush thread did while the loop
applied the next batch."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import zmq

from zmesh import Client
from zmesh.broker.loop import Broker
from zmesh.config import BrokerConfig
from zmesh.store import LmdbStore
from zmesh.testing import free_port


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[tuple[Broker, LmdbStore]]:
    store = LmdbStore(tmp_path / "data", durability="full")
    cfg = BrokerConfig(data=str(tmp_path / "data"), bind=[f"tcp://127.0.0.1:{free_port()}"],
                       pub_bind=[f"tcp://127.0.0.1:{free_port()}"], discovery=False)
    b = Broker(cfg, store=store)
    b.bind()
    yield b, store
    b.stop()
    for t in threading.enumerate():
        if t.name == "durable-serve":
            t.join(10)


def serve(b: Broker) -> threading.Thread:
    t = threading.Thread(target=b.serve, kwargs={"install_signals": False}, daemon=True, name="durable-serve")
    t.start()
    return t


def test_a_reply_and_its_event_wait_for_the_flush(durable_broker: tuple[Broker, LmdbStore]) -> None:
    b, store = durable_broker
    journal = store.journal
    assert journal is not None
    real_sync = journal.sync
    armed, entered, gate = threading.Event(), threading.Event(), threading.Event()

    def gated_sync() -> int:
        if armed.is_set():
            entered.set()
            assert gate.wait(10)
        return real_sync()

    journal.sync = gated_sync  # type: ignore[method-assign]
    serve(b)
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"task.claimed")
    sub.connect(b.pub_endpoints[0])
    try:
        with Client(b.endpoints[0], agent="a", heartbeat=False) as c:
            c.create_task("t1")
            # the SUB connection is up once a publish reaches it (slow joiner): wait for one
            c.create_task("warm")
            got: dict[str, Any] = {}
            while not sub.poll(50):
                c.claim("warm")
                c.release("warm")
            while sub.poll(50):
                sub.recv_multipart()
            armed.set()
            done = threading.Event()

            def claim() -> None:
                got["claim"] = c.claim("t1")
                done.set()

            t = threading.Thread(target=claim, daemon=True)
            t.start()
            assert entered.wait(10), "the journal was never flushed"
            # the record is written and LMDB committed, the flush has not returned: nothing may leave
            assert store.applied > journal.synced
            assert not done.wait(0.3), "a reply left before its journal record was on disk"
            assert not sub.poll(0), "an event left before its journal record was on disk"
            gate.set()
            assert done.wait(10)
            t.join(10)
            assert got["claim"] is not None and got["claim"].token > 0
            assert sub.poll(5000), "the claim's event never came"
            topic, *_ = sub.recv_multipart()
            assert topic.startswith(b"task.claimed")
    finally:
        gate.set()
        sub.close(linger=0)


def test_under_load_every_output_is_covered_by_a_flush(durable_broker: tuple[Broker, LmdbStore]) -> None:
    """Many clients at once: the loop hands flushes to the store's thread while it applies
    the next batch (counted), and no batch's outputs leave before the disk has its record."""
    b, store = durable_broker
    journal = store.journal
    assert journal is not None
    real_emit = b._emit
    early: list[tuple[int, int]] = []

    def checked_emit(out: Any) -> None:
        if out.need > journal.synced:
            early.append((out.need, journal.synced))
        real_emit(out)

    b._emit = checked_emit  # type: ignore[method-assign]
    real_sync = journal.sync
    by_thread: dict[str, int] = {}

    def counted_sync() -> int:
        name = threading.current_thread().name
        by_thread[name] = by_thread.get(name, 0) + 1
        return real_sync()

    journal.sync = counted_sync  # type: ignore[method-assign]
    serve(b)
    with Client(b.endpoints[0]) as admin:
        for i in range(8):
            for j in range(150):
                admin.create_task(f"w{i}-{j}")
    errors: list[BaseException] = []
    tokens: list[int] = []

    def worker(i: int) -> None:
        try:
            with Client(b.endpoints[0], agent=f"a{i}", heartbeat=False) as c:
                for j in range(150):
                    claim = c.claim(f"w{i}-{j}")
                    assert claim is not None
                    tokens.append(claim.token)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert not early, f"outputs left before their flush: (need, synced) {early[:5]}"
    assert by_thread.get("zmesh-journal-flush", 0) > 0, f"no flush was handed to the store's thread: {by_thread}"
    assert len(set(tokens)) == 8 * 150  # every claim won, each its own fencing token
    assert journal.last_seq >= 1  # the claims went through the journal
    assert journal.synced == store.applied  # and every one of them is on disk now


def test_urgent_outputs_never_wait_behind_low_work(durable_broker: tuple[Broker, LmdbStore]) -> None:
    """A flood of low messages and claims at once: a low transaction is never applied, and a
    flush never handed to the store's thread, while an urgent batch's outputs wait in the
    outbox (they would wait for that low batch's apply, or for the GIL behind it)."""
    from zmesh import protocol
    from zmesh.broker.lanes import LOW_LANE

    b, store = durable_broker
    seen = {"urgent_behind_low": 0, "checked": 0}
    bad: list[str] = []

    def urgent_waiting() -> bool:
        durable = store.durable()
        return any(out.items and out.items[0].lane < LOW_LANE and out.need > durable for out in b._outbox)

    real_apply = b._applier.apply

    def checked_apply(items: Any, *args: Any) -> Any:
        if items and items[0].lane == LOW_LANE:
            seen["checked"] += 1
            if urgent_waiting():
                bad.append("a low transaction was applied while urgent outputs waited")
        elif items and b._lanes:
            seen["urgent_behind_low"] += 1
        return real_apply(items, *args)

    b._applier.apply = checked_apply  # type: ignore[method-assign]
    real_soon = store.sync_soon

    def checked_soon() -> None:
        if b._lanes and urgent_waiting():
            bad.append("an urgent flush was handed to the flush thread while low work waited")
        real_soon()

    store.sync_soon = checked_soon  # type: ignore[method-assign]
    serve(b)
    ctx = zmq.Context.instance()
    flood = ctx.socket(zmq.DEALER)
    flood.setsockopt(zmq.LINGER, 0)
    flood.connect(b.endpoints[0])
    try:
        with Client(b.endpoints[0], agent="inbox", heartbeat=False) as _inbox, \
                Client(b.endpoints[0], agent="claimer", heartbeat=False) as c:
            for i in range(300):
                c.create_task(f"f{i}")
            total, window, sent, answered, claimed = 3000, 500, 0, 0, 0
            while answered < total:
                while sent < total and sent - answered < window:
                    body = {"to": "inbox", "subject": "flood", "priority": "low", "body": {"i": sent}}
                    flood.send_multipart(protocol.encode_request(b"r%d" % sent, "send", body))
                    sent += 1
                if claimed < 300:  # a claim between the flood's reads
                    assert c.claim(f"f{claimed}") is not None
                    claimed += 1
                while flood.poll(0 if claimed < 300 else 10_000):
                    reply = protocol.decode_reply(flood.recv_multipart())
                    assert reply.ok, reply
                    answered += 1
                    if answered == total:
                        break
    finally:
        flood.close(0)
    assert not bad, bad[:3]
    assert seen["checked"] > 0, "no low transaction was applied"
    assert seen["urgent_behind_low"] > 0, f"no urgent batch met deferred low work: {seen}"
