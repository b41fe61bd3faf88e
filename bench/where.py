"""Where a claim's time goes: ``python -m bench.where``. Prints, side by side in one run:

1. inside the broker, per claim: the core's work (``Core.handle``), the commit at
   durability full, and the bytes one commit writes (pages: 4 KiB each), against the raw
   probe's one-key transaction;
2. the price of a page on this disk: N random 4 KiB pages rewritten + one fdatasync;
3. client CPU per claim: ``zmesh.Client.claim`` against the same request loop written
   bare on the client's own socket (encode, send, poll, recv, decode), same broker;
4. server CPU per request, split by thread (the Python main thread, libzmq's I/O thread),
   for zmesh (``hello``, which writes nothing, and ``claim``) and the raw LMDB probe, with
   1 and with 8 client processes (durability none: CPU, not disk).
Medians of per-call timings; the machine is shared, so compare the pairs, not runs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import lmdb
import zmq

from zmesh import Client
from zmesh import protocol
from zmesh.core import Core, Now
from zmesh.transport.sockets import NOBLOCK, recv_frames, send_frames
from zmesh.store import LmdbStore
from zmesh.testing import run_broker

from .systems import ProbeSystem, create_tasks

N = 2000
PAGE = 4096


def _now() -> Now:
    return Now(time.monotonic(), time.time())


def _med(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1e6)


def _written() -> int:
    """Bytes this process passed to write system calls so far (/proc/self/io wchar)."""
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("wchar:"))


def commit_cost(tmp: Path) -> dict[str, Any]:
    store = LmdbStore(tmp / "zmesh", durability="full")
    core = Core()
    with store.write() as txn:
        ctx = core.batch(txn, _now())
        for i in range(N):
            core.handle(ctx, "task_create", protocol.validate(protocol.OPS["task_create"], {"id": f"t{i}"}))
    handle, commit = [], []
    bodies = [protocol.validate(protocol.OPS["claim"], {"task": f"t{i}", "agent": "a", "ttl": 60})
              for i in range(N)]
    w0 = _written()
    for body in bodies:
        t0 = time.perf_counter()
        cm = store.write()
        txn = cm.__enter__()
        core.handle(core.batch(txn, _now()), "claim", body)
        t1 = time.perf_counter()
        cm.__exit__(None, None, None)
        handle.append(t1 - t0)
        commit.append(time.perf_counter() - t1)
    zmesh_bytes = (_written() - w0) / N
    store.close()
    env = lmdb.open(str(tmp / "probe"), map_size=1 << 30)
    probe = []
    w0 = _written()
    for i in range(N):
        t0 = time.perf_counter()
        with env.begin(write=True) as ptxn:
            key = b"k%d" % i
            if ptxn.get(key) is None:
                ptxn.put(key, b"claimed")
        probe.append(time.perf_counter() - t0)
    probe_bytes = (_written() - w0) / N
    env.close()
    return {"zmesh core.handle(claim) µs": _med(handle), "zmesh commit (full) µs": _med(commit),
            "probe txn + commit (full) µs": _med(probe),
            "zmesh pages written per claim commit": round(zmesh_bytes / PAGE, 1),
            "probe pages written per commit": round(probe_bytes / PAGE, 1)}


def page_price(tmp: Path, rounds: int = 300) -> dict[str, Any]:
    """What one more dirty page costs a synced commit on this disk."""
    path = tmp / "pages.dat"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"\1" * (PAGE * 1024))
        os.fsync(fd)
        page = b"\2" * PAGE
        out = {}
        for k in (1, 3, 9):
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                for off in random.sample(range(1024), k):
                    os.pwrite(fd, page, off * PAGE)
                os.fdatasync(fd)
                times.append(time.perf_counter() - t0)
            out[f"{k} page(s) + fdatasync µs"] = _med(times)
        return out
    finally:
        os.close(fd)


def client_cpu(tmp: Path) -> dict[str, Any]:
    with run_broker(tmp / "broker", durability="none") as b:
        keys = [f"c{i}" for i in range(2 * N)]
        create_tasks(b.endpoint, keys)
        c = Client(b.endpoint, agent="cpu", ttl=60).connect()
        t = time.process_time()
        for k in keys[:N]:
            c.claim(k, ttl=60)
        full = (time.process_time() - t) / N
        sock, poller = c._socket(), c._poller
        t = time.process_time()
        for i, k in enumerate(keys[N:]):
            send_frames(sock, protocol.encode_request(b"bare%d" % i, "claim",
                                                      {"task": k, "agent": "cpu", "ttl": 60}), NOBLOCK)
            poller.poll(30_000)
            reply = protocol.decode_reply(recv_frames(sock))
            assert reply.ok, reply.body
        bare = (time.process_time() - t) / N
        c.close()
    return {"zmesh Client.claim CPU µs": round(full * 1e6),
            "same request loop, bare, same socket CPU µs": round(bare * 1e6)}


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread of a process, keyed 'main' / 'zmq-io' / other names."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        except FileNotFoundError:  # a thread that just ended
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        key = "main" if tid == str(pid) else "zmq-io" if name.startswith("ZMQbg/IO") else "other"
        out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def _raw_client(endpoint: str, k: int, n: int, op: str) -> None:
    """Sequential requests on a bare DEALER: as little client CPU as a client can use."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(endpoint)
    for i in range(n):
        if op == "probe":
            frames = [b"p%d-%d" % (k, i)]
        else:
            body = {"task": f"w{k}-{i}", "agent": f"w{k}", "ttl": 60} if op == "claim" else {}
            frames = protocol.encode_request(b"r%d-%d" % (k, i), op, body)
        sock.send_multipart(frames)
        sock.poll(30_000)
        sock.recv_multipart()
    sock.close(0)


def _server_cpu(endpoint: str, pid: int, op: str, procs: int, n: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    ps = [ctx.Process(target=_raw_client, args=(endpoint, k, n, op)) for k in range(procs)]
    before, t0 = _thread_cpu(pid), time.perf_counter()
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    after, wall = _thread_cpu(pid), time.perf_counter() - t0
    per = {k: (after[k] - before.get(k, 0.0)) / (procs * n) * 1e6 for k in after}
    return {"main": round(per.get("main", 0.0)), "zmq-io": round(per.get("zmq-io", 0.0)),
            "req/s": round(procs * n / wall)}


def server_cpu(tmp: Path, n: int = N) -> list[tuple[str, dict[str, float]]]:
    """Server CPU per request by thread: zmesh hello, zmesh claim, probe (durability none)."""
    rows: list[tuple[str, dict[str, float]]] = []
    for procs in (1, 8):
        with run_broker(tmp / f"cpu{procs}", durability="none") as b:
            create_tasks(b.endpoint, [f"w{k}-{i}" for k in range(procs) for i in range(n)])
            for op in ("hello", "claim"):
                rows.append((f"zmesh {op}, {procs} client(s)", _server_cpu(b.endpoint, b.pid, op, procs, n)))
        probe = ProbeSystem("probe", "none", mode="lmdb" if procs == 1 else "group")
        info = probe.start(tmp / f"probe{procs}")
        try:
            assert probe.pid is not None
            name = "probe (one txn per request)" if procs == 1 else "probe (group commit)"
            rows.append((f"{name}, {procs} client(s)",
                         _server_cpu(info["endpoint"], probe.pid, "probe", procs, n)))
        finally:
            probe.stop()
    return rows


def _print(rows: dict[str, Any]) -> None:
    for name, value in rows.items():
        print(f"{name:44s} {value:>6}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="zmesh-where-") as d:
        tmp = Path(d)
        steps: list[tuple[str, Callable[[Path], Any]]] = [
            ("inside the broker (in-process, durability full)", commit_cost),
            ("the price of a page on this disk", page_price),
            ("client CPU per claim (broker at none)", client_cpu),
        ]
        for title, step in steps:
            print(f"## {title}")
            _print(step(tmp))
        print("## server CPU per request by thread, µs (durability none, bare DEALER clients)")
        print(f"{'':44s} {'main':>6} {'zmq-io':>6} {'req/s':>7}")
        for name, r in server_cpu(tmp):
            print(f"{name:44s} {r['main']:>6} {r['zmq-io']:>6} {r['req/s']:>7}")


if __name__ == "__main__":
    sys.exit(main())
