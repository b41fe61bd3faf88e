"""Message workloads (issue 15): direct push latency, and delivery per priority under a flood.

* Push to a live agent: the agent is a pool worker (``Client`` with an agent, reading
  pushes with ``receive()``); the harness sends to it with ``Client.send`` at a fixed rate,
  each body carrying the CLOCK_MONOTONIC stamp taken just before the call; latency is
  receipt minus stamp (send request -> commit -> push over the ROUTER -> the agent's
  client). The floor, in the same run: a raw ROUTER in the harness sending to a raw DEALER
  in a worker, stamped the same way (one hop, no store); and the floor of any brokered
  push: the same raw DEALERs on both ends of a Python ROUTER relay that forwards and does
  nothing else (two hops, no store).
* Priorities under a flood: 10,000 ``low`` messages pipelined to the agent on a raw DEALER
  (a window of requests in flight, as fast as the broker takes them), while the harness
  sends critical, high and normal messages in turn at a fixed rate and, on another
  connection, claims tasks one at a time. The agent records delivery latency per priority;
  the claims are timed in the harness. Claim latency on the same broker without the flood
  is measured first, as the baseline.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Iterator

from . import hist

PRIORITIES = ("critical", "high", "normal", "low")


def inbox_job(inbox: Any, endpoint: str, agent: str, expect: int, timeout: float) -> Iterator[Any]:
    """Pool job: an agent receiving pushes; records latency per priority until ``expect``
    messages came (or ``timeout`` seconds passed after go)."""
    from zmesh import Client

    client = Client(endpoint, agent=agent, timeout=30.0, ttl=30.0).connect()
    hists = {p: hist.new() for p in PRIORITIES}
    got = dict.fromkeys(PRIORITIES, 0)
    yield None
    deadline = time.monotonic() + timeout
    total = 0
    while total < expect and time.monotonic() < deadline:
        msg = client.receive(timeout=max(0.01, deadline - time.monotonic()))
        if msg is None:
            continue
        now = time.monotonic_ns()
        stamp = msg.body.get("t") if isinstance(msg.body, dict) else None
        if stamp is not None:
            hist.record_ns(hists[msg.priority], now - stamp)
            got[msg.priority] += 1
            total += 1
    client.close()
    yield {"hists": {p: hist.encode(h) for p, h in hists.items()}, "got": got}


def raw_dealer_job(inbox: Any, endpoint: str, count: int, timeout: float) -> Iterator[Any]:
    """Pool job: a raw DEALER that the harness's ROUTER sends ``count`` stamped messages to."""
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send(b"hi")  # the ROUTER learns this peer's identity
    h = hist.new()
    got = 0
    yield None
    deadline = time.monotonic() + timeout
    while got < count and time.monotonic() < deadline:
        if not sock.poll(100):
            continue
        frame = sock.recv()
        hist.record_ns(h, time.monotonic_ns() - int.from_bytes(frame[:8], "big"))
        got += 1
    sock.close(0)
    yield {"hist": hist.encode(h), "got": got}


def relay_job(inbox: Any, endpoint: str, count: int, timeout: float) -> Iterator[Any]:
    """Pool job: the least a broker in the middle can be: a ROUTER that forwards each
    message from the sender to the one receiver (the peer that said ``hi``), in Python,
    with no decoding, no store and no reply. Two hops, like a push through zmesh."""
    import zmq

    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    if not sock.poll(30_000):  # ready only once the receiver is known: nothing is sent before
        raise TimeoutError("the receiver never said hi")
    receiver, hello = sock.recv_multipart()
    assert hello == b"hi", hello
    yield None
    relayed = 0
    deadline = time.monotonic() + timeout
    while relayed < count and time.monotonic() < deadline:
        if not sock.poll(100):
            continue
        ident, payload = sock.recv_multipart()
        sock.send_multipart([receiver, payload])
        relayed += 1
    sock.close(0)
    yield {"relayed": relayed}


def _paced(count: int, rate: float) -> Iterator[int]:
    start = time.monotonic()
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield i


def push_latency(pool: Any, info: dict[str, Any], count: int, rate: float) -> dict[str, Any]:
    """zmesh: Client.send -> the agent's receive() (see the module doc)."""
    from zmesh import Client

    agent = f"bench-push-{uuid.uuid4().hex[:6]}"
    rnd = pool.start([("inbox", (info["endpoint"], agent, count, 120.0))])
    sender = Client(info["endpoint"], timeout=30.0)
    try:
        rnd.go()
        pad = "x" * 150
        start = time.monotonic()
        for _i in _paced(count, rate):
            sender.send("push", {"t": time.monotonic_ns(), "pad": pad}, to=agent)
        achieved = count / (time.monotonic() - start)
        got = rnd.results()[0]
    finally:
        sender.close()
    h = hist.merge([got["hists"]["normal"]])
    return {"latency_us": hist.summary(h), "hist": hist.encode(h), "sent": count,
            "lost": count - got["got"]["normal"], "rate": round(achieved, 1)}


def raw_push_latency(pool: Any, count: int, rate: float) -> dict[str, Any]:
    """The floor: a raw ROUTER -> DEALER send, stamped the same way."""
    import zmq

    from zmesh.testing import free_port

    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    router.bind(endpoint)
    try:
        rnd = pool.start([("rawdealer", (endpoint, count, 120.0))])
        ident = router.recv_multipart()[0]
        rnd.go()
        pad = b"x" * 150
        start = time.monotonic()
        for _ in _paced(count, rate):
            router.send_multipart([ident, time.monotonic_ns().to_bytes(8, "big") + pad])
        achieved = count / (time.monotonic() - start)
        got = rnd.results()[0]
    finally:
        router.close(0)
    h = hist.merge([got["hist"]])
    return {"latency_us": hist.summary(h), "hist": got["hist"], "sent": count, "lost": count - got["got"],
            "rate": round(achieved, 1)}


def raw_relay_latency(pool: Any, count: int, rate: float) -> dict[str, Any]:
    """The floor of any brokered push: a raw DEALER in the harness -> a Python ROUTER relay
    in a worker (relay_job) -> a raw DEALER in another worker, stamped the same way."""
    import zmq

    from zmesh.testing import free_port

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    rnd = pool.start([("relay", (endpoint, count, 120.0)), ("rawdealer", (endpoint, count, 120.0))])
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        rnd.go()
        pad = b"x" * 150
        start = time.monotonic()
        for _ in _paced(count, rate):
            sock.send(time.monotonic_ns().to_bytes(8, "big") + pad)
        achieved = count / (time.monotonic() - start)
        _, got = rnd.results()
    finally:
        sock.close(0)
    return {"latency_us": hist.summary(hist.merge([got["hist"]])), "hist": got["hist"], "sent": count,
            "lost": count - got["got"], "rate": round(achieved, 1)}


def _claims(endpoint: str, keys: list[str], out: list[int], stop: threading.Event | None = None) -> None:
    from zmesh import Client

    with Client(endpoint, timeout=30.0) as c:
        for key in keys:
            if stop is not None and stop.is_set():
                return
            t0 = time.monotonic_ns()
            c.claim(key, agent="bench-claimer", ttl=60)
            out.append(time.monotonic_ns() - t0)


def _flood(endpoint: str, agent: str, count: int, window: int, done: threading.Event) -> None:
    """``count`` low messages to ``agent``, ``window`` requests in flight on one DEALER."""
    import zmq

    from zmesh import protocol

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    prefix = uuid.uuid4().bytes
    sent = answered = 0
    try:
        while answered < count:
            while sent < count and sent - answered < window:
                body = {"to": agent, "subject": "flood", "priority": "low", "body": {"t": time.monotonic_ns()}}
                sock.send_multipart(protocol.encode_request(prefix + b"%d" % sent, "send", body))
                sent += 1
            if not sock.poll(30_000):
                raise RuntimeError("broker stopped answering the flood")
            sock.recv_multipart()
            answered += 1
    finally:
        sock.close(0)
        done.set()


def priorities_under_flood(pool: Any, info: dict[str, Any], low: int, probes: int, rate: float,
                           claims: int) -> dict[str, Any]:
    """Delivery p95 per priority while ``low`` low messages flood the broker, and claim p95
    meanwhile against the same broker without the flood (see the module doc)."""
    from zmesh import Client

    from .systems import create_tasks

    endpoint = info["endpoint"]
    keys = [f"flood-claim-{i}" for i in range(claims * 2)]
    create_tasks(endpoint, keys)
    quiet: list[int] = []
    _claims(endpoint, keys[:claims], quiet)  # the baseline: no flood
    agent = f"bench-inbox-{uuid.uuid4().hex[:6]}"
    expect = low + probes * 3
    rnd = pool.start([("inbox", (endpoint, agent, expect, 300.0))])
    done = threading.Event()
    during: list[int] = []
    stop = threading.Event()
    try:
        rnd.go()
        flooder = threading.Thread(target=_flood, args=(endpoint, agent, low, 1000, done), daemon=True)
        claimer = threading.Thread(target=_claims, args=(endpoint, keys[claims:], during, stop), daemon=True)
        flooder.start()
        claimer.start()
        with Client(endpoint, timeout=30.0) as sender:
            for i in _paced(probes * 3, rate):
                priority = PRIORITIES[i % 3]
                sender.send("probe", {"t": time.monotonic_ns()}, to=agent, priority=priority)
        flood_done = done.wait(300)
        stop.set()
        claimer.join(120)
        flooder.join(10)
        got = rnd.results()[0]
    finally:
        stop.set()
    out: dict[str, Any] = {"low": low, "probes": probes, "rate": rate, "flood_finished": flood_done,
                           "priorities": {}}
    for p in PRIORITIES:
        h = hist.merge([got["hists"][p]])
        sent = low if p == "low" else probes
        out["priorities"][p] = {"latency_us": hist.summary(h), "sent": sent, "got": got["got"][p]}
    for name, samples in (("claims_quiet", quiet), ("claims_flood", during)):
        h = hist.new()
        for ns in samples:
            hist.record_ns(h, ns)
        out[name] = {"latency_us": hist.summary(h), "claims": len(samples)}
    return out
