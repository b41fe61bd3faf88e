"""Joining by discovery: the time from an agent's client start (``Client(mesh=...)``, no
endpoint) to the first reply of the broker it found with zeroconf, N starts in a row.

The reference is Zyre (the zeromq peer-discovery framework): its peers join each other in
about one second (UDP beacons every second). Everything runs on loopback: the broker
advertises on 127.0.0.1 only and the clients browse there (ZMESH_INTERFACES=127.0.0.1), so
no packet leaves the host. Each start pays zeroconf's start-up, the query (python-zeroconf
delays a browser's first query by 20-120 ms), the broker's answer (at once: the client
queries from an ephemeral port), the 0.15 s the client listens for a second broker of its
mesh (the two-broker rule), zeroconf's shutdown, the connection and one hello. The starts
follow each other with no pause.

``python -m bench.discovery [N]`` runs it alone and prints the JSON summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import hist

ROOT = Path(__file__).resolve().parent.parent
MESH = "bench"
ZYRE_JOIN_S = 1.0
#: the clients' side, run in a process of its own with the loopback-only environment
CLIENTS = """
import json, sys, time
from zmesh import Client
out = []
for _ in range(int(sys.argv[1])):
    t0 = time.perf_counter_ns()
    c = Client(mesh=sys.argv[2], timeout=5.0, heartbeat=False)
    t1 = time.perf_counter_ns()
    c.hello()
    t2 = time.perf_counter_ns()
    c.close()
    out.append([t1 - t0, t2 - t0])
print(json.dumps(out))
"""


def _env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZMESH_")}
    env.update(ZMESH_INTERFACES="127.0.0.1", ZMESH_KNOWN_HOSTS=str(work / "known_hosts"), PYTHONUNBUFFERED="1")
    return env


def discovery_join(work: Path, n: int) -> dict[str, Any]:
    """Start a broker of mesh ``bench`` advertising on loopback, then time ``n`` client
    starts in one process; the broker is stopped by PID."""
    from zmesh.testing import free_port

    work.mkdir(parents=True, exist_ok=True)
    env = _env(work)
    log = work / "discovery-broker.log"
    cmd = [sys.executable, "-m", "zmesh", "broker", "--data", str(work / "discovery-data"), "--bind",
           f"tcp://127.0.0.1:{free_port()}", "--pub-bind", f"tcp://127.0.0.1:{free_port()}", "--no-ipc",
           "--mesh", MESH, "--durability", "none"]
    with open(log, "ab") as out:
        broker = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                  cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while "advertising zmesh broker" not in log.read_text(errors="replace"):
            if broker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the broker did not advertise on loopback: {log.read_text()[-500:]}")
            time.sleep(0.05)
        done = subprocess.run([sys.executable, "-c", CLIENTS, str(n), MESH], capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=60 + 10 * n)
        if done.returncode != 0:
            raise RuntimeError(f"discovery clients failed: {done.stderr[-500:]}")
        times = json.loads(done.stdout)
    finally:
        broker.terminate()
        try:
            broker.wait(15)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait(5)
    joined, first = hist.new(), hist.new()
    for join_ns, reply_ns in times:
        hist.record_ns(joined, join_ns)
        hist.record_ns(first, reply_ns)
    return {"n": n, "latency_us": hist.summary(first), "joined_us": hist.summary(joined),
            "reference": f"Zyre peers join in about {ZYRE_JOIN_S:g} s",
            "where": "loopback, ZMESH_INTERFACES=127.0.0.1"}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="zmesh-bench-discovery-") as tmp:
        print(json.dumps(discovery_join(Path(tmp), int(sys.argv[1]) if len(sys.argv) > 1 else 10), indent=2))
