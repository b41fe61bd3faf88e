"""The workloads. Each runs its clients in separate OS processes (spawned, so no state is
inherited), starts them together at a barrier, and returns raw HDR histograms plus counts.

Claims are create-if-absent with a TTL on keys nobody holds yet (zmesh: tasks created
beforehand, untimed). Latency is measured in the client around one call.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import threading
import time
import uuid
from typing import Any, Iterator

from . import hist
from .systems import System, claim_client, publisher, rss_bytes, subscriber

CTX = mp.get_context("spawn")
TTL_S = 60.0


# ------------------------------------------------------------------ worker pool
class Pool:
    """Worker processes spawned once per run (spawn start: nothing inherited) and reused by
    every workload, so process start-up never lands inside a measurement.

    A round: each worker gets a job, sets it up (connect, warm up) and says ready; when all
    are ready the harness says go (the start barrier); each runs and sends its result.
    Rounds may overlap (agents heartbeat while claims are measured) on disjoint workers."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.out = CTX.Queue()
        self.inboxes = [CTX.Queue() for _ in range(size)]
        self.procs = [CTX.Process(target=_pool_main, args=(i, self.inboxes[i], self.out), daemon=True)
                      for i in range(size)]
        self.free = set(range(size))
        self._stash: list[tuple[Any, ...]] = []
        for p in self.procs:
            p.start()
        self._collect(set(range(size)), "alive")

    def _collect(self, workers: set[int], kind: str, timeout: float = 900) -> dict[int, Any]:
        """One message of ``kind`` from each of ``workers`` (others' messages are kept)."""
        got: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(workers):
            keep = []
            for msg in self._stash:
                if msg[1] in workers and msg[1] not in got and msg[0] in (kind, "error"):
                    if msg[0] == "error":
                        raise RuntimeError(f"worker {msg[1]}: {msg[2]}")
                    got[msg[1]] = msg[2] if len(msg) > 2 else None
                else:
                    keep.append(msg)
            self._stash = keep
            if len(got) < len(workers):
                self._stash.append(self.out.get(timeout=max(1.0, deadline - time.monotonic())))
        return got

    def start(self, jobs: list[tuple[str, tuple[Any, ...]]]) -> "Round":
        if len(jobs) > len(self.free):
            raise ValueError(f"{len(jobs)} jobs for {len(self.free)} free workers")
        workers = sorted(self.free)[: len(jobs)]
        self.free -= set(workers)
        for w, job in zip(workers, jobs):
            self.inboxes[w].put(job)
        rnd = Round(self, workers)
        try:
            self._collect(set(workers), "ready")
        except BaseException:
            self.free |= set(workers)
            raise
        return rnd

    def run(self, jobs: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        return self.start(jobs).go().results()

    def close(self) -> None:
        for inbox in self.inboxes:
            inbox.put(None)
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()


class Round:
    def __init__(self, pool: Pool, workers: list[int]) -> None:
        self.pool, self.workers = pool, workers

    def _tell(self, word: str) -> "Round":
        for w in self.workers:
            self.pool.inboxes[w].put(word)
        return self

    def go(self) -> "Round":
        return self._tell("go")

    def stop(self) -> "Round":
        return self._tell("stop")

    def results(self) -> list[Any]:
        try:
            got = self.pool._collect(set(self.workers), "done")
        finally:
            self.pool.free |= set(self.workers)
        return [got[w] for w in self.workers]


def _pool_main(index: int, inbox: Any, out: Any) -> None:
    out.put(("alive", index))
    from .agentic import race_job, reserve_job
    from .messages import inbox_job, raw_dealer_job, relay_job
    from .presence import coordinator_job

    jobs = {"claim": _claim_job, "subscribe": _sub_job, "agents": _agents_job, "coordinator": coordinator_job,
            "inbox": inbox_job, "rawdealer": raw_dealer_job, "relay": relay_job, "reserve": reserve_job,
            "race": race_job}
    while True:
        job = inbox.get()
        if job is None:
            return
        name, args = job
        try:
            gen = jobs[name](inbox, *args)
            next(gen)  # set up
            out.put(("ready", index))
            assert inbox.get() == "go"
            out.put(("done", index, next(gen)))
        except BaseException as exc:  # report, never hang the harness
            out.put(("error", index, f"{name}: {type(exc).__name__}: {exc}"))


def _claim_job(inbox: Any, info: dict[str, Any], agent: str, key_lists: list[list[str]],
               warmup: list[list[str]], ttl: float) -> Iterator[Any]:
    """One thread per key list (one client each, one request in flight)."""
    clients = [claim_client(info, f"{agent}-{i}") for i in range(len(key_lists))]
    for c, keys in zip(clients, warmup):
        for k in keys:
            c.claim(k, ttl)
    results: list[dict[str, Any]] = [{} for _ in clients]

    def run(i: int) -> None:
        c, h, won = clients[i], hist.new(), []
        t0 = time.monotonic()
        for k in key_lists[i]:
            s = time.perf_counter_ns()
            ok = c.claim(k, ttl)
            hist.record_ns(h, time.perf_counter_ns() - s)
            if ok:
                won.append(k)
        results[i] = {"hist": hist.encode(h), "won": won, "start": t0, "end": time.monotonic()}

    yield None
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    yield results


def _run_claimers(pool: Pool, info: dict[str, Any], per_proc: list[list[list[str]]],
                  warmup: list[list[list[str]]], ttl: float = TTL_S) -> list[dict[str, Any]]:
    jobs = [("claim", (info, f"p{i}", keys, warm, ttl)) for i, (keys, warm) in enumerate(zip(per_proc, warmup))]
    return [r for rs in pool.run(jobs) for r in rs]


def _summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    h = hist.merge([r["hist"] for r in results])
    elapsed = max(r["end"] for r in results) - min(r["start"] for r in results)
    ops = h.get_total_count()
    return {"latency_us": hist.summary(h), "hist": hist.encode(h), "ops": ops,
            "elapsed_s": round(elapsed, 3), "rate": round(ops / elapsed, 1) if elapsed > 0 else None,
            "won": sum(len(r["won"]) for r in results)}


# ------------------------------------------------------------------ workloads
def claim_latency(pool: Pool, system: System, info: dict[str, Any], n: int, tag: str,
                  warm: int = 200) -> dict[str, Any]:
    keys = [f"{tag}-{i}" for i in range(n)]
    warmup = [f"{tag}-w{i}" for i in range(warm)]
    system.prepare(info, warmup + keys)
    res = _summarise(_run_claimers(pool, info, [[keys]], [[warmup]]))
    res["violations"] = n - res["won"]  # every fresh key must be won
    return res


def contended(pool: Pool, system: System, info: dict[str, Any], procs: int, n: int, tag: str) -> dict[str, Any]:
    keys = [f"{tag}-{i}" for i in range(n)]
    system.prepare(info, keys)
    results = _run_claimers(pool, info, [[keys] for _ in range(procs)], [[[]] for _ in range(procs)])
    winners: dict[str, int] = {}
    for r in results:
        for k in r["won"]:
            winners[k] = winners.get(k, 0) + 1
    res = _summarise(results)
    res["violations"] = sum(1 for k in keys if winners.get(k, 0) != 1)
    res["procs"] = procs
    return res


def throughput(pool: Pool, system: System, info: dict[str, Any], clients: int, total: int,
               tag: str) -> dict[str, Any]:
    """``clients`` concurrent clients (one process each up to the pool size, threads beyond
    that), distinct keys."""
    procs = min(clients, pool.size)
    per_client = max(1, total // clients)
    lists = [[f"{tag}-c{c}-{i}" for i in range(per_client)] for c in range(clients)]
    warm = [[f"{tag}-c{c}-w{i}" for i in range(20)] for c in range(clients)]
    system.prepare(info, [k for ks in warm + lists for k in ks])
    per_proc = [lists[p::procs] for p in range(procs)]
    warm_proc = [warm[p::procs] for p in range(procs)]
    res = _summarise(_run_claimers(pool, info, per_proc, warm_proc))
    res["clients"] = clients
    res["violations"] = clients * per_client - res["won"]
    return res


def _sub_job(inbox: Any, info: dict[str, Any], count: int) -> Iterator[Any]:
    sub = subscriber(info)
    yield None
    h = hist.new()
    got = 0
    while got < count:
        payload = sub.recv(5.0)
        if payload is None:
            break
        hist.record_ns(h, time.monotonic_ns() - int.from_bytes(payload[:8], "big"))
        got += 1
    sub.close()
    yield {"hist": hist.encode(h), "got": got}


def broadcast(pool: Pool, system: System, info: dict[str, Any], subs: int, count: int, rate: float,
              size: int = 200) -> dict[str, Any]:
    """One publisher (the harness process), ``subs`` subscriber processes, paced at
    ``rate``/s. Latency is publish call start -> delivery (CLOCK_MONOTONIC is shared by
    processes)."""
    pub = publisher(info) if info["kind"] != "rawpub" else None
    try:
        if pub is None:  # raw PUB binds: it must exist before the SUBs connect
            pub = publisher(info)
        rnd = pool.start([("subscribe", (info, count))] * subs).go()
        time.sleep(0.5)  # slow joiner: raw PUB/SUB has no replay, so let subscriptions land
        pad = b"x" * (size - 8)
        interval = 1.0 / rate
        start = time.monotonic()
        for i in range(count):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pub.publish(time.monotonic_ns().to_bytes(8, "big") + pad)
        achieved = count / (time.monotonic() - start)
        got = rnd.results()
    finally:
        if pub is not None:
            pub.close()
    h = hist.merge([g["hist"] for g in got])
    return {"latency_us": hist.summary(h), "hist": hist.encode(h), "subs": subs, "sent": count,
            "lost": subs * count - sum(g["got"] for g in got), "rate": round(achieved, 1)}


# ------------------------------------------------------------------ zmesh-only scale workloads
def _agents_job(inbox: Any, endpoint: str, names: list[str], ttl: float) -> Iterator[Any]:
    """Many registered agents in one process: one DEALER each (as real agents have),
    heartbeating every ttl/3 with the real wire protocol, until told to stop."""
    import queue

    import zmq

    from zmesh import protocol

    ctx = zmq.Context()
    socks = []
    for _name in names:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        socks.append(s)
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    prefix = uuid.uuid4().bytes  # request ids are unique per request
    for i, (s, name) in enumerate(zip(socks, names)):
        s.send_multipart(protocol.encode_request(prefix + b"r%d" % i, "register", {"agent": name, "ttl": ttl}))
    pending = len(socks)
    while pending:
        ready = poller.poll(30_000)
        if not ready:
            raise TimeoutError("broker did not answer register")
        for s, _ in ready:
            s.recv_multipart()
            pending -= 1
    yield None
    interval = ttl / 3 / len(socks)
    n, beats = 0, 0
    next_at = time.monotonic()
    while True:
        try:
            if inbox.get_nowait() == "stop":
                break
        except queue.Empty:
            pass
        i = n % len(socks)
        socks[i].send_multipart(protocol.encode_request(prefix + b"h%d" % n, "heartbeat", {"agent": names[i]}))
        n += 1
        next_at += interval
        # wait for this agent's reply on its own socket (polling all of them would cost the
        # harness more CPU than the broker spends), then sleep until the next one is due
        if socks[i].poll(max(1.0, next_at - time.monotonic()) * 1000):
            socks[i].recv_multipart()
            beats += 1
        wait = next_at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
    # unregister: agents left to lapse would expire together a TTL later, inside whatever
    # is measured next on this broker
    for i, (s, name) in enumerate(zip(socks, names)):
        s.send_multipart(protocol.encode_request(prefix + b"u%d" % i, "unregister", {"agent": name}))
    for s in socks:
        if s.poll(30_000):
            s.recv_multipart()
    for s in socks:
        s.close(0)
    ctx.term()
    yield {"agents": len(names), "heartbeats": beats}


@contextlib.contextmanager
def with_agents(pool: Pool, info: dict[str, Any], agents: int, ttl: float, procs: int = 4) -> Iterator[int]:
    """``agents`` live agents heartbeating against the broker while the block runs."""
    names = [f"agent-{i}" for i in range(agents)]
    rnd = pool.start([("agents", (info["endpoint"], names[k::procs], ttl)) for k in range(procs)]).go()
    try:
        yield agents
    finally:
        rnd.stop().results()


def bulk_load(data_dir: str, n: int, batch: int = 20_000) -> float:
    """Fill a data directory with ``n`` available tasks through the real core (no broker,
    durability none: it is setup, not a measurement). Returns seconds taken."""
    from zmesh import protocol
    from zmesh.core import Core, Now
    from zmesh.store import LmdbStore

    start = time.monotonic()
    store = LmdbStore(data_dir, durability="none")
    core = Core()
    op = protocol.OPS["task_create"]
    try:
        for base in range(0, n, batch):
            now = Now(time.monotonic(), time.time())
            with store.write() as txn:
                ctx = core.batch(txn, now)
                for i in range(base, min(n, base + batch)):
                    core.handle(ctx, "task_create", protocol.validate(op, {"id": f"bulk-{i:08d}",
                                "data": {"n": i}}))
        with store.write() as txn:  # closed as a broker closes (the claim index)
            core.checkpoint(txn)
    finally:
        store.close()
    return time.monotonic() - start


def broker_rss(system: System) -> int | None:
    return rss_bytes(system.pid) if system.pid else None
