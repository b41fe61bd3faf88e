"""Issue 17, limits against abuse: a client flooding requests cannot starve the others, and
neither a flood whose replies are never read nor a subscriber that stops reading grows the
broker's memory without bound. Real broker processes; memory is the broker's anonymous
resident memory (``RssAnon``: the LMDB map is file-backed and does not count), asserted
against a ceiling well under what the same load would hold unbounded, never as a time."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import orjson
import pytest
import zmq

from zmesh import Client
from zmesh import protocol
from zmesh.broker.loop import PEER_SNDHWM, SUB_SNDHWM
from zmesh.broker.retries import RetryCache
from zmesh.testing import BrokerProcess

from .conftest import wait_for

pytestmark = pytest.mark.timeout(300)

MB = 1 << 20


def rss_anon(pid: int) -> int:
    """The process's anonymous resident memory, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/PID/status")


def dealer(endpoint: str, **options: int) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(endpoint)
    return sock


def request(n: int, op: str, body: dict) -> list[bytes]:
    return protocol.encode_request(b"r%d" % n, op, body)


def pipeline(endpoint: str, count: int, body: Callable[[int], tuple[str, dict]], window: int = 500) -> None:
    """``count`` requests (``body(n)`` is the op and body of the n-th), ``window`` of them in
    flight on one DEALER, each reply read and checked ok; a missing reply fails."""
    sock = dealer(endpoint)
    answered = sent = 0
    try:
        while answered < count:
            while sent < count and sent - answered < window:
                sock.send_multipart(request(sent, *body(sent)))
                sent += 1
            assert sock.poll(30_000), f"no reply after {answered} of {count}: replies were dropped"
            reply = protocol.decode_reply(sock.recv_multipart())
            assert reply.ok, reply.body
            answered += 1
    finally:
        sock.close(0)


def served(endpoint: str) -> int:
    """Requests the broker has applied (its status counter)."""
    with Client(endpoint, timeout=30) as c:
        return int(c.status()["requests"])


# ---------------------------------------------------------------- the retry cache
def test_the_retry_cache_is_bounded_in_replies_and_bytes() -> None:
    cache = RetryCache(max_entries=3, max_bytes=1000)
    cache.add({b"a": (1, [b"h", b"x" * 100]), b"b": (2, [b"h", b"x" * 100])})
    assert len(cache) == 2 and cache.bytes == 202
    cache.add({b"a": (9, [b"h", b"y" * 10])})  # the same id again: replaced, counted once
    assert cache.get(b"a") == (9, [b"h", b"y" * 10]) and cache.bytes == 112
    cache.add({b"c": (3, [b"h", b""]), b"d": (4, [b"h", b""])})  # four entries: the oldest (b) goes
    assert cache.get(b"b") is None and len(cache) == 3
    cache.add({b"e": (5, [b"h", b"z" * 999])})  # over the bytes: the oldest go until it fits
    assert cache.bytes <= 1000 and cache.get(b"e") is not None and len(cache) == 1


def test_write_replies_kept_for_retries_cost_their_size(broker_factory: Callable[..., BrokerProcess]) -> None:
    """150,000 small writes fill the retry cache (100,000 kept): it holds copies of the
    replies' size, not orjson's 4 KiB buffers (437 MB measured before, 54 MB after)."""
    b = broker_factory(durability="none")
    before = rss_anon(b.pid)
    pipeline(b.endpoint, 150_000, lambda n: ("publish", {"topic": "small", "data": 1}))
    grown = rss_anon(b.pid) - before
    print(f"retry cache of small writes: the broker grew {grown / MB:.0f} MB")
    assert grown < 150 * MB, f"the broker grew {grown / MB:.0f} MB keeping 100,000 small replies"


# ---------------------------------------------------------------- a flooding client
def test_a_flooding_client_does_not_starve_the_others(broker_factory: Callable[..., BrokerProcess]) -> None:
    """While one connection keeps 2,000 requests in flight without pause, another client's
    200 claim cycles are all served, and the flood is still going when they are done."""
    b = broker_factory(durability="none")
    stop, flood_answers = threading.Event(), [0]

    def flood() -> None:
        sock = dealer(b.endpoint, RCVHWM=0)
        sent = 0
        try:
            while not stop.is_set():
                while sent - flood_answers[0] < 2000:
                    sock.send_multipart(request(sent, "task_list", {"limit": 10}))
                    sent += 1
                while sock.poll(0):
                    sock.recv_multipart()
                    flood_answers[0] += 1
                sock.poll(10)
        finally:
            sock.close(0)

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        wait_for(lambda: flood_answers[0] > 5000, timeout=60, what="the flood to be under way")
        with Client(b.endpoint, agent="victim", timeout=30) as c:
            for i in range(200):
                c.create_task(f"t{i}")
                claim = c.claim(f"t{i}")
                c.complete(f"t{i}", token=claim.token)
            during = flood_answers[0]
            assert c.status()["tasks"]["completed"] == 200
        wait_for(lambda: flood_answers[0] > during + 2000, timeout=60, what="the flood to go on")
        assert flooder.is_alive()
    finally:
        stop.set()
        flooder.join(30)


def test_replies_nobody_reads_do_not_grow_the_broker(broker_factory: Callable[..., BrokerProcess]) -> None:
    """60,000 requests for 4-task pages from a connection that never reads: the broker
    answers them all, keeps at most PEER_SNDHWM replies queued, and stays serving."""
    b = broker_factory(durability="none")
    with Client(b.endpoint, timeout=30) as c:
        for i in range(4):
            c.create_task(f"task-{i:03d}", data={"pad": "x" * 800})
        reply = len(orjson.dumps({"tasks": c.tasks(limit=4)}))
        base_requests = int(c.status()["requests"])
    count = 60_000
    unbounded = count * reply
    ceiling = 100 * MB
    assert unbounded > 2 * ceiling and PEER_SNDHWM * reply < ceiling / 2, "the check could not fail"
    before = rss_anon(b.pid)
    sock = dealer(b.endpoint, RCVHWM=1, RCVBUF=4096, SNDHWM=0)
    try:
        for n in range(count):
            sock.send_multipart(request(n, "task_list", {"limit": 4}))
        wait_for(lambda: served(b.endpoint) >= base_requests + count, timeout=120,
                 what="the broker to answer the whole flood")
        grown = rss_anon(b.pid) - before
        assert grown < ceiling, f"the broker grew {grown / MB:.0f} MB holding replies nobody reads"
        print(f"replies nobody reads: the broker grew {grown / MB:.0f} MB (unbounded: {unbounded / MB:.0f} MB)")
        with Client(b.endpoint, timeout=30) as other:
            other.create_task("after")  # and it still serves
    finally:
        sock.close(0)


def test_a_pipelining_client_loses_no_reply(broker_factory: Callable[..., BrokerProcess]) -> None:
    """A client that keeps 5,000 requests in flight (the bench's task loader keeps 2,000)
    and reads as it goes gets every reply: a burst of replies to one peer stays under
    PEER_SNDHWM."""
    b = broker_factory(durability="none")
    window = 5_000
    assert window < PEER_SNDHWM
    pipeline(b.endpoint, 50_000, lambda n: ("task_create", {"id": f"t{n}"}), window)


# ---------------------------------------------------------------- a subscriber that stops reading
def test_a_subscriber_that_stops_reading_does_not_grow_the_broker(
        broker_factory: Callable[..., BrokerProcess]) -> None:
    """50,000 events of 8 KB (400 MB) published while one subscriber reads nothing: the
    broker holds at most SUB_SNDHWM of them for it, and a subscriber that reads gets the
    last one."""
    b = broker_factory(durability="none")
    size, count = 8 * 1024, 50_000
    ceiling = 250 * MB
    assert count * size > 1.5 * ceiling and SUB_SNDHWM * size < ceiling * 0.7, "the check could not fail"
    ctx = zmq.Context.instance()

    def subscriber(hwm: int) -> zmq.Socket:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, hwm)
        if hwm == 1:
            sub.setsockopt(zmq.RCVBUF, 4096)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(b.pub_endpoint)
        return sub

    stalled, reading = subscriber(1), subscriber(100_000)
    topics: list[bytes] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            if reading.poll(50):
                topics.append(reading.recv_multipart()[0])

    reader = threading.Thread(target=read, daemon=True)
    try:
        with Client(b.endpoint, timeout=30) as c:
            # both subscriptions are joined once the reading one sees a publish (the broker's
            # heartbeat reaches both the same way)
            wait_for(lambda: reading.poll(50) and stalled.poll(0), timeout=30, what="the subscriptions")
            reader.start()
            before = rss_anon(b.pid)
            pad = "x" * size
            pipeline(b.endpoint, count, lambda n: ("publish", {"topic": "bulk", "data": pad}))
            grown = rss_anon(b.pid) - before
            assert grown < ceiling, f"the broker grew {grown / MB:.0f} MB for a subscriber that reads nothing"
            print(f"stalled subscriber: the broker grew {grown / MB:.0f} MB (events: {count * size / MB:.0f} MB)")
            c.publish("last")
            wait_for(lambda: b"msg.last" in topics, timeout=60, what="the reading subscriber to get the last event")
    finally:
        stop.set()
        if reader.is_alive():
            reader.join(10)
        stalled.close(0)
        reading.close(0)
