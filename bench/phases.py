"""Where the broker's main thread spends a request, phase by phase: ``python -m bench.phases``.

``bench.where`` says how much CPU the main thread spends per request; this says on what.
A real :class:`~zmesh.broker.loop.Broker` serves in a thread of this process (durability
none: CPU, not disk), bare DEALER clients in their own processes send claims (or hellos),
and each phase of the loop is wrapped to add up the thread's own CPU time
(``time.thread_time``) spent in it:

* ``poll``: waiting for input, as CPU: the kernel's wake-up and libzmq's mailbox;
* ``drain``: reading the ready routers' frames; ``decode``: parsing and validating them;
* ``apply``: the write transaction, split into ``handle`` (the core's work per request)
  and ``commit`` (hooks, the journal record, LMDB's commit) and the rest (dedup, replies);
* ``settle``: sending what the journal covers: replies, pushes and events.

Rules it keeps: the broker's code is not edited, only wrapped in this process, so each
wrapper's own clock reads (~1 µs a phase) are in its figures; compare rows of one run,
not runs. Every client process is joined and the broker stopped before it prints.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import zmq

from zmesh import protocol
from zmesh.broker.apply import Applier
from zmesh.broker.loop import Broker, tune_gc
from zmesh.config import BrokerConfig
from zmesh.core import Core, Now
from zmesh.store import LmdbStore
from zmesh.store.lmdb_txn import _Write
from zmesh.testing import free_port, ping

from .where import _raw_client

#: phase -> (owner, method name); nested phases (handle, commit inside apply) are listed after
PHASES: dict[str, tuple[type, str]] = {
    "poll": (zmq.Poller, "poll"),
    "drain": (Broker, "_drain"),
    "decode": (Broker, "_decode"),
    "apply": (Applier, "apply"),
    "handle": (Core, "handle"),
    "commit": (_Write, "__exit__"),
    "settle": (Broker, "_settle"),
}


def _wrap(owner: type, name: str, phase: str, sums: dict[str, float], only: Callable[[], bool]) -> Callable[[], None]:
    """Add the calling thread's CPU time in ``owner.name`` to ``sums[phase]`` (when ``only()``);
    returns the function that puts the original back."""
    original = getattr(owner, name)
    clock = time.thread_time

    def timed(*args: Any, **kwargs: Any) -> Any:
        if not only():
            return original(*args, **kwargs)
        t0 = clock()
        try:
            return original(*args, **kwargs)
        finally:
            sums[phase] += clock() - t0

    setattr(owner, name, timed)
    return lambda: setattr(owner, name, original)


def _seed(data: Path, keys: list[str]) -> None:
    """The tasks, written straight into the store before the broker opens it (so creating
    them is not in the figures)."""
    store, core = LmdbStore(data, durability="none"), Core()
    with store.write() as txn:
        ctx = core.batch(txn, Now(time.monotonic(), time.time()))
        spec = protocol.OPS["task_create"]
        for key in keys:
            core.handle(ctx, "task_create", protocol.validate(spec, {"id": key}))
    store.close()


def measure(op: str, procs: int, n: int, tmp: Path, **settings: Any) -> dict[str, float]:
    """µs of the broker thread's CPU per request, by phase, for ``procs`` clients x ``n``
    (``settings``: broker settings by name, e.g. ``audit="off"``)."""
    data = tmp / f"{op}-{procs}-{len(list(tmp.iterdir()))}"
    _seed(data, [f"w{k}-{i}" for k in range(procs) for i in range(n)])
    port, pub = free_port(), free_port()
    while pub == port:
        pub = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    config = BrokerConfig.load(None, env={}, data=str(data), bind=[endpoint], pub_bind=[f"tcp://127.0.0.1:{pub}"],
                               discovery=False, ipc=False, **{"durability": "none", **settings})
    broker = Broker(config)
    broker.bind()
    tune_gc()  # as `zmesh broker` does
    sums: dict[str, float] = defaultdict(float)
    serving = threading.Thread(target=broker.serve, kwargs={"install_signals": False}, name="broker")
    serving.start()
    restore = []
    try:
        if ping(endpoint, 10.0) is None:
            raise RuntimeError("the broker did not answer")
        ident = serving.ident
        only = lambda: threading.get_ident() == ident  # noqa: E731 - the broker's thread alone
        restore = [_wrap(owner, name, phase, sums, only) for phase, (owner, name) in PHASES.items()]
        ctx = mp.get_context("spawn")
        clients = [ctx.Process(target=_raw_client, args=(endpoint, k, n, op)) for k in range(procs)]
        # the thread's whole CPU, from its own CPU clock (the phases are inside it)
        assert ident is not None
        clock = time.pthread_getcpuclockid(ident)

        def cpu() -> float:
            return time.clock_gettime(clock)

        before = cpu()
        sums.clear()
        for p in clients:
            p.start()
        for p in clients:
            p.join()
        total = cpu() - before
    finally:
        for undo in restore:
            undo()
        broker.stop()
        serving.join(30)
    count = procs * n
    out = {phase: round(sums[phase] / count * 1e6, 1) for phase in PHASES}
    out["apply, other"] = round(out["apply"] - out["handle"] - out["commit"], 1)
    out["main thread, all"] = round(total / count * 1e6, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.phases", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per client (default 3000)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8], help="client counts (default 1 8)")
    args = parser.parse_args()
    if args.requests < 1 or any(c < 1 for c in args.clients):
        parser.error("--requests and --clients must be at least 1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="zmesh-phases-") as tmp:
        for procs in args.clients:
            for op in ("hello", "claim"):
                rows.append((f"{op}, {procs} client(s)", measure(op, procs, args.requests, Path(tmp))))
    names = [*PHASES, "apply, other", "main thread, all"]
    print("broker main-thread CPU per request, µs (durability none, bare DEALER clients)")
    print(f"{'':22s}" + "".join(f"{n:>10s}" for n in ["poll", "drain", "decode", "apply", "handle", "commit",
                                                      "settle", "ap.other", "all"]))
    for label, row in rows:
        print(f"{label:22s}" + "".join(f"{row[n]:>10.1f}" for n in names))


if __name__ == "__main__":
    main()
