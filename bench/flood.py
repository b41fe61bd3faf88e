"""The flood workload alone, as the full run does it: ``python -m bench.flood [ROUNDS]``.

Per round a fresh zmesh(full) broker with ``--metrics``; a push run first (as in the full
run), then bench.messages.priorities_under_flood with 10,000 low messages, 100 probes per
priority at 30/s and 500 claims without and 500 during the flood. Prints the client-side
claim p95 both ways, delivery p95 per priority, and the broker's own claim latency
histogram (``zmesh_request_duration_seconds{op="claim"}``, read to reply) for the round:
what says whether the time went in the broker or outside it.
"""

from __future__ import annotations

import re
import sys
import tempfile
import urllib.request
from pathlib import Path

from . import messages, workloads
from .systems import ZmeshSystem, free_port


def claim_histogram(url: str) -> list[tuple[str, int]]:
    """The broker's cumulative claim latency buckets (le, count) from a scrape."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    pattern = re.compile(r'zmesh_request_duration_seconds_bucket\{le="([^"]+)",op="claim"\} (\S+)')
    return [(m.group(1), int(float(m.group(2)))) for m in map(pattern.match, text.splitlines()) if m]


def main(argv: list[str]) -> int:
    rounds = int(argv[0]) if argv else 3
    pool = workloads.Pool(4)
    try:
        for r in range(rounds):
            with tempfile.TemporaryDirectory() as tmp:
                metrics = f"127.0.0.1:{free_port()}"
                system = ZmeshSystem("zmesh(full)", "full", level="full", extra=("--metrics", metrics))
                info = system.start(Path(tmp))
                try:
                    messages.push_latency(pool, info, 2000, 500.0)
                    f = messages.priorities_under_flood(pool, info, 10_000, 100, 30.0, 500)
                    buckets = claim_histogram(f"http://{metrics}/metrics")
                finally:
                    system.stop()
            quiet, during = f["claims_quiet"]["latency_us"]["p95"], f["claims_flood"]["latency_us"]["p95"]
            delivery = {p: v["latency_us"].get("p95") for p, v in f["priorities"].items()}
            print(f"round {r}: claim p95 without the flood {quiet} µs, during it {during} µs "
                  f"({during / quiet:.2f}x); delivery p95 µs {delivery}; flood finished {f['flood_finished']}")
            print(f"  broker claim latency, cumulative (le s, claims of both phases): {buckets}", flush=True)
    finally:
        pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
