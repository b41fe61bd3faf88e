"""Where a claim's time goes: ``python -m bench.where``. Prints, side by side in one run:

1. inside the broker, per claim: the core's work (``Core.handle``) and the commit (data
   pages written + fsync at durability full), against the raw probe's one-key transaction;
2. client CPU per claim: ``zmesh.Client.claim`` against a broker at durability none, and
   a bare DEALER against the echo probe (the floor for any pyzmq client);
3. broker CPU per claim while 8 client processes claim (durability none: CPU, not disk).
Medians of per-call timings; the machine is shared, so compare the pairs, not runs.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lmdb
import zmq

from zmesh import Client, protocol
from zmesh.core import Core, Now
from zmesh.store import LmdbStore
from zmesh.testing import run_broker

from .systems import ProbeSystem, create_tasks

N = 2000


def _now() -> Now:
    return Now(time.monotonic(), time.time())


def commit_cost(tmp: Path) -> dict[str, float]:
    store = LmdbStore(tmp / "zmesh", durability="full")
    core = Core()
    with store.write() as txn:
        for i in range(N):
            core.handle(txn, "task_create", protocol.validate(protocol.OPS["task_create"], {"id": f"t{i}"}), _now())
    handle, commit = [], []
    for i in range(N):
        t0 = time.perf_counter()
        cm = store.write()
        txn = cm.__enter__()
        core.handle(txn, "claim", protocol.validate(protocol.OPS["claim"], {"task": f"t{i}", "agent": "a", "ttl": 60}), _now())
        t1 = time.perf_counter()
        cm.__exit__(None, None, None)
        handle.append(t1 - t0)
        commit.append(time.perf_counter() - t1)
    store.close()
    env = lmdb.open(str(tmp / "probe"), map_size=1 << 30)
    probe = []
    for i in range(N):
        t0 = time.perf_counter()
        with env.begin(write=True) as txn:
            key = b"k%d" % i
            if txn.get(key) is None:
                txn.put(key, b"claimed")
        probe.append(time.perf_counter() - t0)
    env.close()
    med = lambda xs: round(statistics.median(xs) * 1e6)  # noqa: E731
    return {"zmesh core.handle(claim) µs": med(handle), "zmesh commit (full) µs": med(commit),
            "probe txn + commit (full) µs": med(probe)}


def client_cpu(tmp: Path) -> dict[str, float]:
    out = {}
    with run_broker(tmp / "broker", durability="none") as b:
        keys = [f"c{i}" for i in range(N)]
        create_tasks(b.endpoint, keys)
        c = Client(b.endpoint, agent="cpu", ttl=60).connect()
        t = time.process_time()
        for k in keys:
            c.claim(k, ttl=60)
        out["zmesh Client.claim CPU µs"] = round((time.process_time() - t) / N * 1e6)
        c.close()
    probe = ProbeSystem("echo", "none", mode="echo")
    info = probe.start(tmp)
    try:
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.connect(info["endpoint"])
        t = time.process_time()
        for i in range(N):
            s.send_multipart([b"k%d" % i])
            s.poll(30_000)
            s.recv_multipart()
        out["bare DEALER round trip CPU µs"] = round((time.process_time() - t) / N * 1e6)
        s.close(0)
    finally:
        probe.stop()
    return out


def _claimer(endpoint: str, k: int, n: int) -> None:
    c = Client(endpoint, agent=f"w{k}", ttl=60).connect()
    for i in range(n):
        c.claim(f"b{k}-{i}", ttl=60)
    c.close(unregister=False)


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_cpu(tmp: Path, procs: int = 8) -> dict[str, float]:
    """Broker CPU per claim under load (8 client processes, durability none)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with run_broker(tmp / "loaded", durability="none") as b:
        create_tasks(b.endpoint, [f"b{k}-{i}" for k in range(procs) for i in range(N)])
        ps = [ctx.Process(target=_claimer, args=(b.endpoint, k, N)) for k in range(procs)]
        cpu0, t0 = _cpu_seconds(b.pid), time.perf_counter()
        for p in ps:
            p.start()
        for p in ps:
            p.join()
        cpu, wall = _cpu_seconds(b.pid) - cpu0, time.perf_counter() - t0
    claims = procs * N
    return {f"broker CPU per claim, {procs} clients µs": round(cpu / claims * 1e6),
            f"claims/s, {procs} client processes": round(claims / wall)}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="zmesh-where-") as d:
        tmp = Path(d)
        for name, value in {**commit_cost(tmp), **client_cpu(tmp), **broker_cpu(tmp)}.items():
            print(f"{name:36s} {value:>6}")


if __name__ == "__main__":
    sys.exit(main())
