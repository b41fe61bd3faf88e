"""python -m bench [--quick] [--out DIR] [--results FILE] [--no-peers] [--journal-records N]

Runs every workload against zmesh, the raw pyzmq (+LMDB) probes and the peers that are
installed (bench/setup_peers.sh), side by side in one run, and writes RESULTS.md, a JSON
file of raw HDR histograms and a percentile plot."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson

from . import agentic, discovery, messages, paired, presence, recovery, report, workloads
from .paired import GOALS
from .systems import ProbeSystem, RawPubSub, System, ZmeshSystem

HERE = Path(__file__).resolve().parent


#: what each zmesh level does before a reply (docs/JOURNAL.md): count the flushes
FULL = "journal: one fdatasync per batch, before the reply"
FAST = "journal written before the reply, fdatasynced right after (one flush per commit, not awaited)"
NONE = "journal written, no fdatasync"


def claim_systems(quick: bool, peers: bool) -> list[System]:
    out: list[System] = [ZmeshSystem("zmesh(full)", FULL, level="full")]
    if not quick:
        out += [ZmeshSystem("zmesh(fast)", FAST, level="fast"),
                ZmeshSystem("zmesh(none)", NONE, level="none")]
    out += [ProbeSystem("raw-zmq", "none (echo, no store)", mode="echo")]
    if not quick:
        out += [ProbeSystem("raw-zmq+lmdb(none)", "no fsync", mode="lmdb", level="none"),
                ProbeSystem("raw-zmq+lmdb(fast)", "one flush per commit", mode="lmdb", level="fast")]
    out += [ProbeSystem("raw-zmq+lmdb(full)", "fsync per commit: data + meta page", mode="lmdb", level="full"),
            ProbeSystem("raw-zmq+lmdb-group(full)", "group commit, fsync per batch", mode="group", level="full")]
    if peers:
        from . import peers as peer_mod

        out += peer_mod.available_peers()
    return out


def broadcast_systems(quick: bool, peers: bool) -> list[System]:
    out: list[System] = [RawPubSub("raw-zmq-pubsub", "in memory", kinds=frozenset({"broadcast"})),
                         ZmeshSystem("zmesh(none)", NONE + " (publish: event logged, committed)", level="none")]
    if not quick:
        out.append(ZmeshSystem("zmesh(full)", FULL + " (publish: event logged, committed)", level="full"))
    if peers:
        from . import peers as peer_mod

        out += [p for p in peer_mod.available_peers() if "broadcast" in p.kinds and p.name != "redis-aof-always"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small counts: finishes in about a minute")
    ap.add_argument("--out", default=None, help="directory for results.json and latency.png "
                    "(default: bench/results, or bench/out with --quick)")
    ap.add_argument("--results", default=None, help="markdown file (default: bench/RESULTS.md, "
                    "or OUT/RESULTS.md with --quick)")
    ap.add_argument("--no-peers", action="store_true", help="only zmesh and the raw probes")
    ap.add_argument("--store-tasks", type=int, default=None, help="tasks for the store-scale run")
    ap.add_argument("--agents", type=int, default=None, help="agents for the agent-scale run")
    ap.add_argument("--journal-records", type=int, default=None, help="journal records for the recovery run "
                    f"(default {recovery.DEFAULT_RECORDS:,}, {recovery.QUICK_RECORDS:,} with --quick)")
    args = ap.parse_args(argv)
    quick = args.quick
    out_dir = Path(args.out) if args.out else HERE / ("out" if quick else "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    results_md = Path(args.results) if args.results else (out_dir / "RESULTS.md" if quick else HERE / "RESULTS.md")
    n_lat = 300 if quick else 5000
    n_cont = 200 if quick else 1000
    n_thr = 1000 if quick else 20000
    clients = [1, 16] if quick else [1, 4, 16, 64]
    n_bcast = 200 if quick else 5000
    n_agents = args.agents or (100 if quick else 1000)
    n_store = args.store_tasks or (10_000 if quick else 1_000_000)
    n_journal = args.journal_records or (recovery.QUICK_RECORDS if quick else recovery.DEFAULT_RECORDS)

    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "quick": quick, "git": report.git_rev(),
        "command": "python -m bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "machine": report.machine(), "versions": {}, "skipped": {}, "claim": {}, "contended": {},
        "throughput": {}, "broadcast": {}, "scale": {}, "paired": {}, "presence": {}, "status_time": {},
        "targets": [], "notes": [],
    }
    csys = claim_systems(quick, not args.no_peers)
    bsys = broadcast_systems(quick, not args.no_peers)
    rounds = 2 if quick else 5
    pair_sizes = ({"latency": 100, "throughput": 800, "broadcast": 100, "push": 100} if quick
                  else {"latency": 2000, "throughput": 10_000, "broadcast": 2000, "push": 2000})
    pair_list = paired.pairs(not args.no_peers, store_dir="scale-store", agents=n_agents, tasks=n_store)
    n_state = 300 if quick else 3000
    steps = len(csys) * (2 + len(clients)) + len(bsys) + 4 + 2 + 5 + 4 + 1 + 1 + len(pair_list) * rounds
    from tqdm import tqdm

    bar = tqdm(total=steps, desc="bench", unit="step", file=sys.stderr, dynamic_ncols=True)

    def step(label: str) -> None:
        bar.set_postfix_str(label[:40])

    step("starting worker processes")
    pool = workloads.Pool(max(max(clients), 10) if not quick else 10)
    with tempfile.TemporaryDirectory(prefix="zmesh-bench-") as tmp, _closing(pool):
        work = Path(tmp)
        for system in csys:
            _with_system(system, work, results, bar, step, lambda info: _claims(
                pool, system, info, results, n_lat, n_cont, n_thr, clients, bar, step))
        for system in bsys:
            _with_system(system, work, results, bar, step, lambda info: _broadcast(
                pool, system, info, results, n_bcast, bar, step))
        _presence(pool, work, results, n_state, bar, step)
        _messages(pool, work, results, quick, bar, step)
        _agentic(pool, work, results, quick, not args.no_peers, bar, step)
        _discovery(work, results, quick, bar, step)
        _scale(pool, work, results, n_lat, n_agents, n_store, bar, step)
        _recovery(work, results, n_journal, bar, step)

        def tick(label: str) -> None:
            step(label)
            bar.update()

        paired.run(pool, work, results, pair_list, rounds, pair_sizes, n_agents, tick)
    bar.close()
    _targets(results)
    (out_dir / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    report.plot(results, out_dir / "latency.png")
    results_md.write_text(report.render(results))
    print(f"wrote {results_md}, {out_dir / 'results.json'}, {out_dir / 'latency.png'}", file=sys.stderr)
    return 0


def _with_system(system: System, work: Path, results: dict[str, Any], bar: Any, step: Callable[[str], None],
                 body: Callable[[dict[str, Any]], None]) -> None:
    step(f"start {system.name}")
    try:
        info = system.start(work)
    except Exception as exc:  # a missing peer is reported, never faked
        results["skipped"][system.name] = str(exc).splitlines()[0][:200]
        system.stop()
        return
    if system.version:
        results["versions"].setdefault(system.name.split("(")[0].split("+")[0], system.version)
    try:
        body(info)
    except Exception as exc:
        results["skipped"][system.name] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
    finally:
        system.stop()


def _claims(pool: workloads.Pool, system: System, info: dict[str, Any], results: dict[str, Any], n_lat: int, n_cont: int,
            n_thr: int, clients: list[int], bar: Any, step: Callable[[str], None]) -> None:
    info = dict(info, ttl=workloads.TTL_S)
    step(f"{system.name} latency")
    r = workloads.claim_latency(pool, system, info, n_lat, "lat")
    results["claim"][system.name] = dict(r, durability=system.durability)
    bar.update()
    step(f"{system.name} contended")
    r = workloads.contended(pool, system, info, 8, n_cont, "cont")
    results["contended"][system.name] = dict(r, durability=system.durability, keys=n_cont)
    bar.update()
    rows = []
    for c in clients:
        step(f"{system.name} x{c}")
        rows.append(dict(workloads.throughput(pool, system, info, c, n_thr, f"thr{c}"), durability=system.durability))
        bar.update()
    results["throughput"][system.name] = rows


def _broadcast(pool: workloads.Pool, system: System, info: dict[str, Any], results: dict[str, Any], n: int, bar: Any,
               step: Callable[[str], None]) -> None:
    step(f"{system.name} broadcast")
    r = workloads.broadcast(pool, system, info, 10, n, 1000.0)
    results["broadcast"][system.name] = dict(r, durability=getattr(system, "broadcast_durability", system.durability))
    bar.update()


def _presence(pool: workloads.Pool, work: Path, results: dict[str, Any], n: int, bar: Any,
              step: Callable[[str], None]) -> None:
    """State change -> coordinator callback, and raw PUB/SUB at the same rate (the floor)."""
    rate = 200.0
    (work / "presence").mkdir()
    zsys = ZmeshSystem("zmesh(full)", "full", level="full")
    step("presence: state change -> coordinator")
    info = zsys.start(work / "presence")
    try:
        r = presence.state_change_latency(pool, info, n, rate)
        results["presence"]["zmesh(full): report -> Client.follow callback"] = dict(r, durability="full")
    finally:
        zsys.stop()
    bar.update()
    step("presence: raw PUB/SUB")
    raw = RawPubSub("raw-zmq-pubsub", "in memory", kinds=frozenset({"broadcast"}))
    info = raw.start(work)
    try:
        r = workloads.broadcast(pool, raw, info, 1, n, rate)
        results["presence"]["raw-zmq-pubsub: publish -> SUB recv"] = dict(r, durability="in memory")
    finally:
        raw.stop()
    bar.update()


def _messages(pool: workloads.Pool, work: Path, results: dict[str, Any], quick: bool, bar: Any,
              step: Callable[[str], None]) -> None:
    """Push latency (zmesh none and full, raw ROUTER -> DEALER) and delivery per priority
    under a flood of low messages (bench/messages.py)."""
    n_push, rate = (200, 200.0) if quick else (2000, 500.0)
    low, probes, claims = (1000, 20, 100) if quick else (10_000, 100, 500)
    out = results.setdefault("messages", {"push": {}, "flood": None})
    for level in ("none", "full"):
        zsys = ZmeshSystem(f"zmesh({level})", level, level=level)
        (work / f"messages-{level}").mkdir()
        step(f"messages: push zmesh({level})")
        info = zsys.start(work / f"messages-{level}")
        try:
            out["push"][f"zmesh({level}): send -> agent's receive()"] = dict(
                messages.push_latency(pool, info, n_push, rate), durability=level)
            bar.update()
            if level == "full":
                step("messages: priorities under a flood of low")
                out["flood"] = dict(messages.priorities_under_flood(pool, info, low, probes, 30.0, claims),
                                    durability=level)
                bar.update()
        finally:
            zsys.stop()
    step("messages: raw ROUTER -> DEALER")
    out["push"]["raw-zmq: ROUTER send -> DEALER recv"] = dict(messages.raw_push_latency(pool, n_push, rate),
                                                             durability="in memory")
    bar.update()
    step("messages: raw two-hop relay")
    out["push"][RELAY] = dict(messages.raw_relay_latency(pool, n_push, rate), durability="in memory")
    bar.update()


def _agentic(pool: workloads.Pool, work: Path, results: dict[str, Any], quick: bool, peers: bool, bar: Any,
             step: Callable[[str], None]) -> None:
    """Path reservations and waking an MCP agent, zmesh beside MCP Agent Mail (bench/agentic.py)."""
    n_res, n_race, n_wake = (100, 20, 20) if quick else (2000, 200, 200)
    out = results.setdefault("agentic", {"reserve": {}, "race": {}, "wake": {}})
    zsys = ZmeshSystem("zmesh(full)", "full", level="full")
    (work / "agentic").mkdir()
    info = zsys.start(work / "agentic")
    try:
        step("agentic: zmesh reserve")
        out["reserve"]["zmesh(full)"] = dict(agentic.zmesh_reserve(pool, info["endpoint"], n_res), durability="full")
        bar.update()
        step("agentic: zmesh 8-way race")
        out["race"]["zmesh(full)"] = dict(agentic.zmesh_race(pool, info["endpoint"], n_race), durability="full")
        bar.update()
        step("agentic: zmesh mcp wake")
        for kind, r in agentic.zmesh_wake(info["endpoint"], n_wake).items():
            title = "task created" if kind == "task" else "message sent"
            out["wake"][f"zmesh(full): {title} -> wait_for_work returns"] = dict(r, durability="full")
        bar.update()
    finally:
        zsys.stop()
    step("agentic: MCP Agent Mail")
    if peers:
        try:
            am = agentic.agentmail(work / "agentmail", max(20, n_res // 10), max(10, n_race // 4), max(10, n_wake // 4))
        except RuntimeError as exc:
            results["skipped"][agentic.AGENTMAIL] = str(exc)
        else:
            results["versions"][agentic.AGENTMAIL] = am["version"]
            durability = "SQLite + a git commit per write, no fsync"
            out["reserve"][agentic.AGENTMAIL] = dict(am["reserve"], durability=durability)
            out["race"][agentic.AGENTMAIL] = dict(am["race"], durability=durability)
            out["wake"][f"{agentic.AGENTMAIL}: message sent -> fetch_inbox poll sees it "
                        f"({am['wake']['poll_s'] * 1000:g} ms poll)"] = dict(am["wake"], durability=durability)
    bar.update()


def _discovery(work: Path, results: dict[str, Any], quick: bool, bar: Any, step: Callable[[str], None]) -> None:
    """Client start -> first reply with the broker found by zeroconf, on loopback (bench/discovery.py)."""
    step("discovery: client start -> first reply")
    try:
        results["discovery"] = discovery.discovery_join(work / "discovery", 5 if quick else 20)
    except (RuntimeError, OSError, ValueError) as exc:  # no multicast on loopback here: reported, never faked
        results["skipped"]["discovery"] = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    bar.update()


def _recovery(work: Path, results: dict[str, Any], records: int, bar: Any, step: Callable[[str], None]) -> None:
    """Opening the store after a crash: a journal of ``records`` claim records rebuilt from
    the snapshot and replayed, and the trusted open beside it (bench/recovery.py)."""
    step(f"recovery: {records:,}-record journal")
    try:
        results["recovery"] = recovery.measure(records, work)
    except (RuntimeError, OSError) as exc:  # a recovery that lost records is reported, never hidden
        results["skipped"]["journal recovery"] = f"failed: {str(exc).splitlines()[0][:300]}"
    bar.update()


def _scale(pool: workloads.Pool, work: Path, results: dict[str, Any], n_lat: int, agents: int, tasks: int, bar: Any,
           step: Callable[[str], None]) -> None:
    base = ZmeshSystem("zmesh(full)", "full", level="full")
    (work / "scale-agents").mkdir()
    info = base.start(work / "scale-agents")
    try:
        step("scale: empty broker")
        r = workloads.claim_latency(pool, base, info, n_lat, "empty")
        results["scale"]["empty broker"] = dict(r, rss=workloads.broker_rss(base))
        bar.update()
        step(f"scale: {agents} agents")
        with workloads.with_agents(pool, info, agents, ttl=10.0) as registered:
            r = workloads.claim_latency(pool, base, info, n_lat, "agents")
            results["scale"][f"{registered:,} agents heartbeating (TTL 10 s)"] = dict(r, rss=workloads.broker_rss(base))
            results["status_time"] = presence.status_times(info["endpoint"], 50 if n_lat < 1000 else 200)
        bar.update()
    finally:
        base.stop()
    step(f"scale: load {tasks:,} tasks")
    store = ZmeshSystem("zmesh(full)", "full", level="full")
    data = work / "scale-store"
    data.mkdir()
    secs = workloads.bulk_load(str(data / "zmesh-full"), tasks)
    results["notes"].append(f"store scale: {tasks:,} tasks bulk-loaded through the core in {secs:.0f} s "
                            "(untimed setup), then the broker was started on that data directory")
    bar.update()
    info = store.start(data)
    try:
        step("scale: claims on the big store")
        r = workloads.claim_latency(pool, store, info, n_lat, "big")
        results["scale"][f"{tasks:,} stored tasks"] = dict(r, rss=workloads.broker_rss(store))
        bar.update()
    finally:
        store.stop()


@contextlib.contextmanager
def _closing(pool: workloads.Pool) -> Iterator[None]:
    try:
        yield
    finally:
        pool.close()


def _p95(section: dict[str, Any], name: str) -> float | None:
    r = section.get(name)
    return r["latency_us"].get("p95") if r else None


def _targets(results: dict[str, Any]) -> None:
    """The target table. Where a target was also measured in alternation (bench/paired.py),
    its verdict is the median of the paired rounds; the single-pass figure stays beside it."""
    t = results["targets"]
    pairs = results.get("paired", {})

    def add(item: dict[str, Any], key: str | None = None) -> None:
        p = pairs.get(key) if key else None
        if p is not None and p["median"] is not None:
            single = item["measured"]
            unit = "x" if p["below"] else ""
            rounds = ", ".join(f"{r['ratio']:.2f}{unit}" for r in p["rounds"] if r["ratio"] is not None)
            item = dict(item, name=p["title"], met=p["met"],
                        measured=f"{p['median']:.2f}{unit} median of {len(p['rounds'])} alternating rounds "
                                 f"({rounds})" + (f"; single pass: {single}" if single else ""))
        t.append(item)

    claim = results["claim"]
    z, raw = _p95(claim, "zmesh(full)"), _p95(claim, "raw-zmq+lmdb(full)")
    add(_target("durable claim p95: zmesh(full) / raw-zmq+lmdb(full)", z, raw, GOALS["claim-full"]), "claim-full")
    zf = _p95(claim, "zmesh(fast)")
    # one flush per commit on both sides: zmesh(full) flushes its journal once before the
    # reply (docs/JOURNAL.md), LMDB with metasync off once
    add(_target("durable claim p95, one flush per commit: zmesh(full) / raw-zmq+lmdb(fast)",
                z, _p95(claim, "raw-zmq+lmdb(fast)"), GOALS["claim-fast"]), "claim-fast")
    for peer in ("etcd", "redis-aof-always"):  # each flushes once before its reply, as zmesh(full)
        p = _p95(claim, peer)
        add({"name": f"durable claim p95: zmesh(full) below {peer}",
             "measured": f"{z:,} µs vs {p:,} µs" if z and p else "not run",
             "goal": "lower", "met": (z < p) if z and p else None})
    p = _p95(claim, "redis-aof-always")  # fast replies before its flush: reported, not judged
    add({"name": "claim p95: zmesh(fast) (reply before the flush) beside redis-aof-always (flush before the reply)",
         "measured": f"{zf:,} µs vs {p:,} µs" if zf and p else "not run", "goal": "reported", "met": None})
    thr = {name: {r["clients"]: r for r in rows} for name, rows in results["throughput"].items()}
    z16 = thr.get("zmesh(full)", {}).get(16, {}).get("rate")
    g16 = thr.get("raw-zmq+lmdb-group(full)", {}).get(16, {}).get("rate")
    add({"name": "16-client durable throughput: zmesh(full) / raw group-commit probe",
         "measured": f"{z16 / g16:.2f} ({z16:,.0f} vs {g16:,.0f} claims/s)" if z16 and g16 else "not run",
         "goal": f">= {GOALS['thr16-full']}", "met": (z16 / g16 >= GOALS["thr16-full"]) if z16 and g16 else None},
        "thr16-full")
    # durable peers flush once per write (or per event-loop pass); NATS KV 2.9 does not flush
    # per write at all, so it is compared with zmesh at none, where neither side flushes
    for level, peer in (("full", "redis-aof-always"), ("full", "etcd"), ("none", "nats-kv")):
        zv = thr.get(f"zmesh({level})", {}).get(16, {}).get("rate")
        p16 = thr.get(peer, {}).get(16, {}).get("rate")
        durable = "" if level == "none" else "durable "
        add({"name": f"16-client {durable}throughput: zmesh({level}) above {peer}",
             "measured": f"{zv:,.0f} vs {p16:,.0f} claims/s" if zv and p16 else "peer skipped" if zv else "not run",
             "goal": "higher", "met": (zv > p16) if zv and p16 else None},
            "thr16-nats" if peer == "nats-kv" else None)
    b = results["broadcast"]
    zb, rb = _p95(b, "zmesh(none)"), _p95(b, "raw-zmq-pubsub")
    lost = b.get("zmesh(none)", {}).get("lost")
    item = _target("broadcast p95 (10 subs): zmesh(none) / raw PUB/SUB", zb, rb, GOALS["broadcast"])
    item["measured"] += f", lost {lost}"
    item["met"] = item["met"] and lost == 0 if item["met"] is not None else None
    add(item, "broadcast")
    pr = results.get("presence", {})
    zs = next((r for k, r in pr.items() if k.startswith("zmesh")), None)
    rs = next((r for k, r in pr.items() if k.startswith("raw")), None)
    if zs is not None:
        p95 = zs["latency_us"].get("p95")
        add({"name": "state change -> coordinator callback p95 (zmesh full) below the predecessor's 10 ms",
             "measured": f"{p95:,} µs, lost {zs['lost']}" if p95 else "not run", "goal": "< 10,000 µs",
             "met": (p95 < 10_000 and zs["lost"] == 0) if p95 else None})
        if rs is not None:
            item = _target("state change -> coordinator p95 / raw PUB/SUB p95 (same rate)", p95,
                           rs["latency_us"].get("p95"), 0)
            add(dict(item, goal="the floor: reported", met=None))
    st = results.get("status_time", {})
    if st:
        add({"name": f"snapshot (every agent, idle queue, blockers) p95 with {st['agents']:,} agents",
             "measured": f"{st['snapshot']['p95']:,} µs (status {st['status']['p95']:,} µs, "
                         f"agent_list {st['agent_list']['p95']:,} µs)",
             "goal": "<= 100,000 µs", "met": st["snapshot"]["p95"] <= 100_000})
    ms = results.get("messages") or {}
    push = ms.get("push", {})
    zp = next((r for k, r in push.items() if k.startswith("zmesh(none)")), None)
    rp = next((r for k, r in push.items() if k.startswith("raw-zmq: ROUTER")), None)
    relay = push.get(RELAY)
    if zp is not None and rp is not None:
        item = _target("push to a live agent p95: zmesh(none) / raw ROUTER->DEALER", zp["latency_us"].get("p95"),
                       rp["latency_us"].get("p95"), GOALS["push"])
        item["measured"] += f", lost {zp['lost']}"
        item["met"] = item["met"] and zp["lost"] == 0 if item["met"] is not None else None
        add(item, "push")
    if zp is not None and relay is not None:  # what the goal above cannot beat: the second hop
        for name, value, base in (("push p95: raw two-hop relay / raw ROUTER->DEALER (the floor of a brokered push)",
                                   relay["latency_us"].get("p95"), rp["latency_us"].get("p95") if rp else None),
                                  ("push p95: zmesh(none) / raw two-hop relay", zp["latency_us"].get("p95"),
                                   relay["latency_us"].get("p95"))):
            add(dict(_target(name, value, base, 0), goal="reported", met=None))
    flood = ms.get("flood")
    if flood:
        for priority, goal_ms in FLOOD_GOALS_MS.items():
            r = flood["priorities"][priority]
            p95 = r["latency_us"].get("p95")
            lost = r["sent"] - r["got"]
            add({"name": f"{priority} delivery p95 while {flood['low']:,} low messages flood the broker (zmesh full)",
                 "measured": f"{p95:,} µs, lost {lost}" if p95 else "not run",
                 "goal": f"< {goal_ms * 1000:,} µs", "met": (p95 < goal_ms * 1000 and lost == 0) if p95 else None})
        add(_target("claim p95 during the flood / the same broker without it",
                    flood["claims_flood"]["latency_us"].get("p95"), flood["claims_quiet"]["latency_us"].get("p95"),
                    GOALS["flood"]))
    dj = results.get("discovery")
    if dj:
        p95 = dj["latency_us"].get("p95")
        add({"name": "client start -> first reply via discovery p95 (zeroconf on loopback) below Zyre's ~1 s join",
             "measured": f"{p95:,} µs (p50 {dj['latency_us'].get('p50'):,} µs, n {dj['n']})" if p95 else "not run",
             "goal": f"< {discovery.ZYRE_JOIN_S * 1e6:,.0f} µs", "met": p95 < discovery.ZYRE_JOIN_S * 1e6 if p95 else None})
    for key in ("curve-claim", "curve-thr", "ops-claim", "ops-thr"):  # measured only in alternation
        p = pairs.get(key)
        if p is not None and p["median"] is not None:
            unit = "x" if p["below"] else ""
            add({"name": p["title"], "measured": "", "goal": ("<= " if p["below"] else ">= ") + f"{p['limit']}{unit}",
                 "met": p["met"]}, key)
    rc = results.get("recovery")
    if rc:
        rb = rc["rebuild"]
        add({"name": f"recovery of a {rc['records']:,}-record journal (rebuild from the snapshot + replay)",
             "measured": f"{rb['seconds']:.2f} s ({rb['records_per_s']:,} records/s, {rb['mb_per_s']:,} MB/s of "
                         f"{rc['bytes_per_record']:,.0f} B records; trusted open {rc['trusted']['seconds']:.2f} s)",
             "goal": "reported", "met": None})
    elif "journal recovery" in results["skipped"]:  # its checks failed: a recovery that lost records
        add({"name": "recovery of a journal (rebuild from the snapshot + replay)",
             "measured": results["skipped"]["journal recovery"], "goal": "reported", "met": False})
    sc = results["scale"]
    empty = sc.get("empty broker", {}).get("latency_us", {}).get("p95")
    for name, r in sc.items():
        if name != "empty broker":
            add(_target(f"claim p95 with {name} / empty broker", r["latency_us"].get("p95"), empty, 1.5),
                "agents" if "agents" in name else "store")


#: the push floor with a broker in the middle (bench/messages.py raw_relay_latency)
RELAY = "raw-zmq relay: DEALER -> Python ROUTER relay -> DEALER (two hops, no store)"

#: delivery goals per priority (the predecessor's priority daemon, REQUIREMENTS part D)
FLOOD_GOALS_MS = {"critical": 50, "high": 75, "normal": 100, "low": 500}


def _target(name: str, value: float | None, base: float | None, limit: float) -> dict[str, Any]:
    if not value or not base:
        return {"name": name, "measured": "not run", "goal": f"<= {limit}x", "met": None}
    ratio = value / base
    return {"name": name, "measured": f"{ratio:.2f}x ({value:,} vs {base:,} µs)", "goal": f"<= {limit}x",
            "met": ratio <= limit}


if __name__ == "__main__":
    sys.exit(main())
