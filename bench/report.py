"""Output: RESULTS.md (markdown tables with durability beside every figure, targets as
ratios measured in the same run), a JSON file with the raw HDR histograms, and a
latency-percentile plot (PNG)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import hist


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        mem = f"{int(open('/proc/meminfo').readline().split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError):
        pass
    import lmdb
    import zmq

    import zmesh

    return {"host": platform.node(), "os": f"{platform.system()} {platform.release()}",
            "distro": _distro(), "cpu": cpu, "cores": os.cpu_count(), "memory": mem,
            "python": sys.version.split()[0], "zmesh": zmesh.__version__,
            "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(), "lmdb": lmdb.__version__,
            "liblmdb": ".".join(map(str, lmdb.version()))}


def _distro() -> str:
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def _lat(s: dict[str, Any]) -> list[str]:
    if not s or not s.get("count"):
        return ["-"] * 4
    return [f"{s[k]:,}" for k in ("p50", "p95", "p99", "max")]


def _row(*cells: Any) -> str:
    flat: list[str] = []
    for c in cells:
        flat += c if isinstance(c, list) else [str(c)]
    return "| " + " | ".join(flat) + " |"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# zmesh benchmark results", "",
        "<!-- written by `python -m bench`; do not edit by hand -->", "",
        f"- Date: {results['date']}",
        f"- Command: `{results['command']}`" + (" (quick mode: small counts, for structure only)" if results["quick"] else "")
        + (f" at commit {results['git']}" if results.get("git") else ""),
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, {m['distro']} ({m['os']})",
        f"- Versions: Python {m['python']}, zmesh {m['zmesh']}, pyzmq {m['pyzmq']} (libzmq {m['libzmq']}), "
        f"py-lmdb {m['lmdb']} (liblmdb {m['liblmdb']})",
        "- Systems measured: " + ("; ".join(f"{k}: {v}" for k, v in results["versions"].items()) or "none"),
        "- All servers on 127.0.0.1, each started by the harness with its own temp data dir and "
        "stopped by PID. Latencies in µs, measured in the client around one call. "
        "Clients and servers share the 2 cores: throughput rows include client CPU.",
        "",
    ]
    if results.get("skipped"):
        lines += ["Skipped: " + "; ".join(f"{k} ({v})" for k, v in results["skipped"].items()), ""]
    lines += ["## Targets (ratios from this run)", "", "| target | measured | goal | met |", "|---|---|---|---|"]
    for t in results["targets"]:
        lines.append(f"| {t['name']} | {t['measured']} | {t['goal']} | {'yes' if t['met'] else '**no**' if t['met'] is False else 'n/a'} |")
    if results.get("paired"):
        lines += ["", "## Targets measured in alternation", "",
                  "Both servers up; rounds alternate A then B and B then A, so a change in machine "
                  "load lands on both sides of a round. The verdict above uses the median ratio.", "",
                  "| target | A | B | metric | rounds: A / B = ratio (first side) | median | goal |",
                  "|---|---|---|---|---|---:|---|"]
        for p in results["paired"].values():
            rounds = "; ".join(
                f"{_num(r['a'])} / {_num(r['b'])} = {r['ratio']:.2f} ({r['first'].upper()} first)"
                + (f", lost {r['a_lost']}" if r.get("a_lost") else "")
                for r in p["rounds"] if r["ratio"] is not None)
            goal = f"{'<=' if p['below'] else '>='} {p['limit']}"
            median = "-" if p["median"] is None else f"{p['median']:.2f}"
            lines.append(f"| {p['title']} | {p['a']} | {p['b']} | {p['metric']} | {rounds} | {median} | {goal} |")
    lines += ["", "## Claim latency (1 client, sequential create-if-absent claims with a TTL)", "",
              "| system | durability | p50 | p95 | p99 | max | claims | p95 vs raw+LMDB(full) |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    base = results["claim"].get("raw-zmq+lmdb(full)", {}).get("latency_us", {}).get("p95")
    for name, r in results["claim"].items():
        s = r["latency_us"]
        lines.append(_row(name, r["durability"], _lat(s), f"{r['ops']:,}", _ratio(s.get("p95"), base)))
    lines += ["", "## Contended claims (8 processes race for the same keys)", "",
              "| system | durability | keys | attempts/s | violations | p95 |", "|---|---|---:|---:|---:|---:|"]
    for name, r in results["contended"].items():
        lines.append(f"| {name} | {r['durability']} | {r['keys']:,} | {r['rate']:,.0f} | {r['violations']} | "
                     f"{r['latency_us'].get('p95', '-'):,} |")
    lines += ["", "## Throughput (concurrent clients claiming distinct keys)", "",
              "| system | durability | clients | claims/s | p95 | p99 |", "|---|---|---:|---:|---:|---:|"]
    for name, rows in results["throughput"].items():
        for r in rows:
            s = r["latency_us"]
            lines.append(f"| {name} | {r['durability']} | {r['clients']} | {r['rate']:,.0f} | "
                         f"{s.get('p95', 0):,} | {s.get('p99', 0):,} |")
    lines += ["", "## Broadcast (1 publisher, subscribers in separate processes, 200 B)", "",
              "| system | durability | subs | sent | achieved msg/s | p50 | p95 | p99 | max | lost |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["broadcast"].items():
        lines.append(_row(name, r["durability"], r["subs"], f"{r['sent']:,}", f"{r['rate']:,.0f}",
                          _lat(r["latency_us"]), r["lost"]))
    pr = results.get("presence", {})
    if pr:
        lines += ["", "## State change -> coordinator (1 agent reporting busy/idle at a fixed rate)", "",
                  "| path | durability | sent | achieved /s | p50 | p95 | p99 | max | lost |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in pr.items():
            lines.append(_row(name, r["durability"], f"{r['sent']:,}", f"{r['rate']:,.0f}",
                              _lat(r["latency_us"]), r["lost"]))
    st = results.get("status_time", {})
    if st:
        lines += ["", f"## Reading the mesh with {st['agents']:,} agents registered and heartbeating", "",
                  "| op | p50 µs | p95 µs | calls |", "|---|---:|---:|---:|"]
        for op in ("status", "agent_list", "snapshot"):
            lines.append(f"| {op} | {st[op]['p50']:,} | {st[op]['p95']:,} | {st[op]['calls']} |")
    ms = results.get("messages") or {}
    if ms.get("push"):
        lines += ["", "## Push to a live agent (1 sender, the agent in a separate process, ~200 B)", "",
                  "| path | durability | sent | achieved /s | p50 | p95 | p99 | max | lost |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in ms["push"].items():
            lines.append(_row(name, r["durability"], f"{r['sent']:,}", f"{r['rate']:,.0f}", _lat(r["latency_us"]),
                              r["lost"]))
    fl = ms.get("flood")
    if fl:
        lines += ["", f"## Delivery per priority while {fl['low']:,} low messages flood the broker "
                      f"(zmesh {fl['durability']}; probes at {fl['rate']:g}/s in turn)", "",
                  "| priority | sent | delivered | p50 | p95 | p99 | max |", "|---|---:|---:|---:|---:|---:|---:|"]
        for priority, r in fl["priorities"].items():
            lines.append(_row(priority, f"{r['sent']:,}", f"{r['got']:,}", _lat(r["latency_us"])))
        for name, title in (("claims_quiet", "claims, no flood"), ("claims_flood", "claims during the flood")):
            r = fl[name]
            lines.append(_row(title, f"{r['claims']:,}", f"{r['claims']:,}", _lat(r["latency_us"])))
    ag = results.get("agentic") or {}
    if ag.get("reserve"):
        lines += ["", "## Path reservations (1 agent reserves one exclusive path, then releases it)", "",
                  "| system | durability | p50 | p95 | p99 | max | reserves | p95 vs zmesh |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        zbase = ag["reserve"].get("zmesh(full)", {}).get("latency_us", {}).get("p95")
        for name, r in ag["reserve"].items():
            s = r["latency_us"]
            lines.append(_row(name, r["durability"], _lat(s), f"{r['ops']:,}", _ratio(s.get("p95"), zbase)))
        lines += ["", "## 8 agents race for one exclusive path per round", "",
                  "| system | rounds | exactly one granted | grants per round: rounds | p95 per attempt |",
                  "|---|---:|---:|---|---:|"]
        for name, r in ag["race"].items():
            spread = ", ".join(f"{g}: {n}" for g, n in r["grants"].items())
            p95 = (r.get("latency_us") or {}).get("p95")
            lines.append(f"| {name} | {r['rounds']} | {r['exactly_one']} | {spread} | "
                         f"{'-' if p95 is None else f'{p95:,}'} |")
        lines += ["", "## Waking an idle MCP agent", "", "| path | durability | n | p50 | p95 | p99 | max |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for name, r in ag["wake"].items():
            lines.append(_row(name, r["durability"], r["n"], _lat(r["latency_us"])))
    dj = results.get("discovery")
    if dj:
        lines += ["", f"## Joining by discovery ({dj['where']}; {dj['n']} client starts in a row)", "",
                  f"From `Client(mesh=...)` with no endpoint to the broker's first reply. Reference: {dj['reference']}.",
                  "", "| measured | p50 | p95 | p99 | max |", "|---|---:|---:|---:|---:|",
                  _row("client start -> broker found (Client returned)", _lat(dj["joined_us"])),
                  _row("client start -> first reply (hello)", _lat(dj["latency_us"]))]
    sc = results.get("scale", {})
    if sc:
        lines += ["", "## Scale (zmesh, durability full, 1 client claim latency)", "",
                  "| setting | p50 | p95 | p99 | max | broker RSS |", "|---|---:|---:|---:|---:|---:|"]
        for name, r in sc.items():
            rss = f"{r['rss'] / 2**20:,.0f} MiB" if r.get("rss") else "-"
            lines.append(_row(name, _lat(r["latency_us"]), rss))
    rc = results.get("recovery")
    if rc:
        rb, tr, warm = rc["rebuild"], rc["trusted"], rc.get("rebuild_warm")
        lines += ["", f"## Journal recovery (zmesh LmdbStore, durability {rc['durability']}, no checkpoint: "
                      "the whole journal is replayed)", "",
                  f"Each journal record is one claim's change set ({rc['record']}; the shape captured from the "
                  "real core), written through the store by a process that then ended without a clean stop. "
                  "Rebuild: another boot id (an OS crash), so the store copies its snapshot (seq 0) into place "
                  "and replays every record; the journal's pages were dropped from the page cache first"
                  + (f" (with them cached: {warm['seconds']:.2f} s)" if warm else "")
                  + f". Trusted: the same boot (a broker crash), the LMDB file is used as it is and "
                  f"{tr['replayed']} record(s) replayed. Both checked: {rb['replayed']:,} record(s) replayed by the "
                  f"rebuild, and after each open the store holds the last seq and all {rb['tasks']:,} tasks with "
                  "their claims. Wall seconds around `LmdbStore(...)` in a fresh "
                  "process; MB = 10^6 bytes of records (`python -m bench.recovery N` runs it alone).", "",
                  "| records | journal MB | bytes/record | rebuild+replay s | records/s | journal MB/s | trusted-open s |",
                  "|---:|---:|---:|---:|---:|---:|---:|",
                  _row(f"{rc['records']:,}", f"{rc['journal_bytes'] / 1e6:,.1f}", f"{rc['bytes_per_record']:,.0f}",
                       f"{rb['seconds']:.2f}", f"{rb['records_per_s']:,}", f"{rb['mb_per_s']:,}",
                       f"{tr['seconds']:.2f}")]
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    analysis = Path(__file__).with_name("ANALYSIS.md")
    if analysis.exists() and not results["quick"]:
        lines += ["", analysis.read_text().strip()]
    lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, section, title in ((axes[0], "claim", "Claim latency, 1 client"),
                               (axes[1], "broadcast", "Broadcast delivery latency")):
        colors = plt.get_cmap("tab20").colors
        for i, (name, r) in enumerate(results[section].items()):
            h = hist.merge([r["hist"]])
            if h.get_total_count() == 0:
                continue
            pts = [(p, v) for p, v in hist.curve(h) if p < 100]
            xs = [1 / (1 - p / 100) for p, _ in pts]
            # zmesh solid and thick, the raw probes dashed, the peers dotted
            style = ("-", 2.2) if name.startswith("zmesh") else (("--", 1.2) if name.startswith("raw") else (":", 1.6))
            ax.plot(xs, [v for _, v in pts], marker="o", markersize=3, color=colors[(2 * i) % 20 + (i >= 10)],
                    linestyle=style[0], linewidth=style[1], label=f"{name} ({r['durability']})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = [1, 2, 10, 20, 100, 1000, 10000]
        ax.set_xticks(ticks)
        ax.set_xticklabels(["p0", "p50", "p90", "p95", "p99", "p99.9", "p99.99"])
        ax.set_ylabel("µs")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
