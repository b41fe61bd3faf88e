"""Target pairs measured in alternation, so a ratio compares like with like in time.

The main pass measures one system after another over ~8 minutes. On a shared machine the
load changes meanwhile, and a ratio of two figures taken minutes apart moves with it:
over eight full runs the zmesh(full) / probe(full) claim p95 ratio ranged 1.32x-2.28x
and the broadcast ratio 1.61x-3.49x, on unchanged code. Here both sides of each target
run with their servers up, in rounds A B, B A, A B, ...: a load change lands on both sides of
a round. The target verdict uses the median of the per-round ratios; the report shows
every round, and the single-pass figure beside it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import messages, workloads
from .systems import ProbeSystem, RawPubSub, RawPush, System, ZmeshSystem

#: every ratio goal, by target key (issue 30's table): the pairs below and the single-pass
#: rows in bench/__main__.py read them here
GOALS: dict[str, float] = {
    "claim-full": 1.3, "claim-fast": 1.3, "thr16-full": 0.8, "thr16-nats": 1.0, "broadcast": 2.0, "push": 2.0,
    "flood": 1.3, "curve-claim": 1.25, "curve-thr": 0.8, "ops-claim": 1.10, "ops-thr": 0.9, "agents": 1.5,
    "store": 1.5,
}

AGENTS_TTL_S = 10.0
#: pushes per second in the push pair (both sides)
PUSH_RATE = 500.0


@dataclass
class Pair:
    """One target: ``a`` / ``b`` on ``workload``; ``limit`` is the goal for the median ratio
    (``below``: ratio <= limit; otherwise ratio >= limit)."""

    key: str
    title: str
    a: Callable[[], System]
    b: Callable[[], System]
    workload: str  # latency | throughput16 | broadcast | agents | push
    limit: float
    below: bool
    # workdir of a side, relative to the run's workdir (the big store is built by the main pass)
    a_dir: str | None = None
    b_dir: str | None = None
    needs_peers: bool = False

    @property
    def metric(self) -> str:
        return "claims/s" if self.workload == "throughput16" else "p95 µs"


def pairs(peers: bool, store_dir: str | None, agents: int, tasks: int) -> list[Pair]:
    from . import peers as peer_mod

    def zmesh(level: str, durability: str = "") -> Callable[[], System]:
        return lambda: ZmeshSystem(f"zmesh({level})", durability or level, level=level)

    def zmesh_secure(level: str) -> Callable[[], System]:
        return lambda: ZmeshSystem(f"zmesh({level}, curve)", level, level=level, secure=True)

    def zmesh_ops(on: bool) -> Callable[[], System]:
        """zmesh(full) with metrics served and scraped and the audit trail on, or with neither."""
        if on:
            return lambda: ZmeshSystem("zmesh(full, metrics+audit)", "full", level="full", scrape=True,
                                       settings={"ZMESH_AUDIT": "writes"})
        return lambda: ZmeshSystem("zmesh(full, no metrics, audit off)", "full", level="full",
                                   settings={"ZMESH_AUDIT": "off"})

    def probe(name: str, mode: str, level: str) -> Callable[[], System]:
        return lambda: ProbeSystem(name, level, mode=mode, level=level)

    def peer(name: str) -> Callable[[], System]:
        return lambda: next(p for p in peer_mod.available_peers() if p.name == name)

    out = [
        # both survive power loss: zmesh by one fdatasync of its journal, LMDB by two flushes
        Pair("claim-full", "durable claim p95: zmesh(full) / raw-zmq+lmdb(full)", zmesh("full"),
             probe("raw-zmq+lmdb(full)", "lmdb", "full"), "latency", GOALS["claim-full"], True),
        # one flush per commit on both sides: zmesh(full) flushes its journal once before the
        # reply, LMDB with metasync off once; zmesh(fast) replies before its flush, so it is
        # not the like-for-like side of a flushing peer
        Pair("claim-fast", "durable claim p95, one flush per commit: zmesh(full) / raw-zmq+lmdb(fast)",
             zmesh("full"), probe("raw-zmq+lmdb(fast)", "lmdb", "fast"), "latency", GOALS["claim-fast"], True),
        Pair("thr16-full", "16-client durable throughput: zmesh(full) / raw group-commit probe",
             zmesh("full"), probe("raw-zmq+lmdb-group(full)", "group", "full"), "throughput16", GOALS["thr16-full"], False),
        Pair("thr16-nats", "16-client throughput: zmesh(none) above nats-kv (neither flushes per write)",
             zmesh("none"), peer("nats-kv"), "throughput16", GOALS["thr16-nats"], False, needs_peers=True),
        Pair("broadcast", "broadcast p95 (10 subs): zmesh(none) / raw PUB/SUB", zmesh("none"),
             lambda: RawPubSub("raw-zmq-pubsub", "in memory", kinds=frozenset({"broadcast"})),
             "broadcast", GOALS["broadcast"], True),
        Pair("push", "push to a live agent p95: zmesh(none) / raw ROUTER->DEALER", zmesh("none"),
             lambda: RawPush("raw-zmq-router-dealer", "in memory", kinds=frozenset({"push"})), "push", GOALS["push"], True),
        Pair("curve-claim", "claim p95 with CurveZMQ on / off: zmesh(full, --secure) / zmesh(full)",
             zmesh_secure("full"), zmesh("full"), "latency", GOALS["curve-claim"], True),
        Pair("curve-thr", "16-client durable throughput with CurveZMQ on / off: zmesh(full, --secure) / zmesh(full)",
             zmesh_secure("full"), zmesh("full"), "throughput16", GOALS["curve-thr"], False),
        Pair("ops-claim", "claim p95 with metrics (scraped every second) and the audit trail on / off: "
             "zmesh(full, metrics+audit) / zmesh(full, neither)", zmesh_ops(True), zmesh_ops(False), "latency",
             GOALS["ops-claim"], True),
        Pair("ops-thr", "16-client durable throughput with metrics and the audit trail on / off",
             zmesh_ops(True), zmesh_ops(False), "throughput16", GOALS["ops-thr"], False),
        Pair("agents", f"claim p95 with {agents:,} agents heartbeating / the same broker without them",
             zmesh("full"), zmesh("full"), "agents", GOALS["agents"], True),
    ]
    if store_dir:
        out.append(Pair("store", f"claim p95 on the {tasks:,}-task store / an empty broker",
                        zmesh("full"), zmesh("full"), "latency", GOALS["store"], True, a_dir=store_dir))
    return [p for p in out if peers or not p.needs_peers]


def run(pool: workloads.Pool, work: Path, results: dict[str, Any], pair_list: list[Pair], rounds: int,
        sizes: dict[str, int], agents: int, tick: Callable[[str], None]) -> None:
    """Measure every pair; results["paired"][key] gets the rounds and the median ratio."""
    out = results.setdefault("paired", {})
    for pair in pair_list:
        try:
            out[pair.key] = _run_pair(pool, work, pair, rounds, sizes, agents, tick)
        except Exception as exc:  # a peer that cannot run is reported, never faked
            results["skipped"][f"paired {pair.key}"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def _start(factory: Callable[[], System], workdir: Path) -> tuple[System, dict[str, Any]]:
    workdir.mkdir(parents=True, exist_ok=True)
    system = factory()
    try:
        return system, dict(system.start(workdir), ttl=workloads.TTL_S)
    except BaseException:
        system.stop()
        raise


def _run_pair(pool: workloads.Pool, work: Path, pair: Pair, rounds: int, sizes: dict[str, int], agents: int,
              tick: Callable[[str], None]) -> dict[str, Any]:
    base = work / "paired" / pair.key
    a_sys, a_info = _start(pair.a, work / pair.a_dir if pair.a_dir else base / "a")
    try:
        if pair.workload == "agents":  # one broker: the sides are agents on / off
            b_sys, b_info = a_sys, a_info
        else:
            b_sys, b_info = _start(pair.b, work / pair.b_dir if pair.b_dir else base / "b")
        try:
            got = []
            for r in range(rounds):
                tick(f"paired {pair.key} round {r + 1}")
                order = ("a", "b") if r % 2 == 0 else ("b", "a")
                row: dict[str, Any] = {"first": order[0]}
                for side in order:
                    system, info = (a_sys, a_info) if side == "a" else (b_sys, b_info)
                    row[side], lost = _measure(pool, pair, system, info, side, sizes, agents, f"{pair.key}{r}{side}")
                    if lost is not None:
                        row[f"{side}_lost"] = lost
                row["ratio"] = round(row["a"] / row["b"], 3) if row["a"] and row["b"] else None
                got.append(row)
        finally:
            if b_sys is not a_sys:
                b_sys.stop()
    finally:
        a_sys.stop()
    ratios = [g["ratio"] for g in got if g["ratio"] is not None]
    median = statistics.median(ratios) if ratios else None
    met = None if median is None else (median <= pair.limit if pair.below else median >= pair.limit)
    if pair.workload in ("broadcast", "push"):
        lost = sum(g.get("a_lost", 0) for g in got)
        met = None if met is None else met and lost == 0
    return {"title": pair.title, "a": a_sys.name, "b": b_sys.name, "metric": pair.metric, "rounds": got,
            "median": None if median is None else round(median, 3), "limit": pair.limit,
            "below": pair.below, "met": met}


def _measure(pool: workloads.Pool, pair: Pair, system: System, info: dict[str, Any], side: str,
             sizes: dict[str, int], agents: int, tag: str) -> tuple[float | None, int | None]:
    if pair.workload == "throughput16":
        return workloads.throughput(pool, system, info, 16, sizes["throughput"], tag)["rate"], None
    if pair.workload == "broadcast":
        r = workloads.broadcast(pool, system, info, 10, sizes["broadcast"], 1000.0)
        return r["latency_us"].get("p95"), r["lost"]
    if pair.workload == "push":
        r = (messages.raw_push_latency(pool, sizes["push"], PUSH_RATE) if info["kind"] == "rawpush"
             else messages.push_latency(pool, info, sizes["push"], PUSH_RATE))
        return r["latency_us"].get("p95"), r["lost"]
    if pair.workload == "agents" and side == "a":  # the same broker, with the agents heartbeating
        with workloads.with_agents(pool, info, agents, ttl=AGENTS_TTL_S):
            return _measure(pool, pair, system, info, "b", sizes, agents, tag)
    return workloads.claim_latency(pool, system, info, sizes["latency"], tag)["latency_us"].get("p95"), None


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.paired KEY[,KEY...] [--rounds N]``: chosen target pairs alone, with
    the full run's sizes (the store and agent pairs need the full run's set-up: not here)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.paired", description=main.__doc__)
    ap.add_argument("keys", help="comma-separated target keys: " + ", ".join(GOALS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args(argv)
    chosen = [p for p in pairs(not args.no_peers, None, 1000, 0) if p.key in args.keys.split(",")]
    if not chosen:
        ap.error(f"no such target among: {', '.join(GOALS)}")
    return run_alone(chosen, args.rounds)


#: the pairs' sizes in a full run (bench/__main__.py), used when pairs run alone
FULL_SIZES = {"latency": 2000, "throughput": 10_000, "broadcast": 2000, "push": 2000}


def run_alone(chosen: list[Pair], rounds: int, goals: bool = True) -> int:
    """Measure ``chosen`` outside a full run (bench.paired, bench.ab) and print each median
    with its rounds (and its goal, when ``goals``: an A / B pairing has none); 1 when none
    could be measured."""
    import sys
    import tempfile

    pool = workloads.Pool(16)
    results: dict[str, Any] = {"skipped": {}}
    try:
        with tempfile.TemporaryDirectory(prefix="zmesh-paired-") as tmp:
            run(pool, Path(tmp), results, chosen, rounds, FULL_SIZES, 1000, lambda label: print(label, file=sys.stderr))
    finally:
        pool.close()
    for r in results.get("paired", {}).values():
        shown = ", ".join(f"{g['a']:,.0f}/{g['b']:,.0f}={g['ratio']}" for g in r["rounds"])
        goal = f"goal {'<=' if r['below'] else '>='} {r['limit']}; " if goals else ""
        print(f"{r['title']}: median {r['median']} ({goal}{shown})")
    for what, why in results["skipped"].items():
        print(f"skipped {what}: {why}")
    return 0 if results.get("paired") else 1

if __name__ == "__main__":
    raise SystemExit(main())
