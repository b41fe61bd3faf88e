"""Presence workloads: how fast a state change reaches a coordinator, and what ``status``
costs with many agents.

* State change -> coordinator callback: a coordinator process follows the broker through
  the public coordinator API (``Client.follow``: one snapshot, then the event stream, the
  Roster updated) and, for every ``agent.busy``/``agent.idle`` of the benchmark agent,
  records now minus the CLOCK_MONOTONIC stamp the agent put in the report's ``message``
  just before sending it. The agent is the harness process, alternating busy and idle at a
  fixed rate (each report a durable write: commit, sync, then publish). Raw PUB/SUB in the
  same run (workloads.broadcast with one subscriber, same rate and count) is the floor.
* status / agent_list / snapshot time with N agents registered and heartbeating.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any, Iterator

from . import hist


def coordinator_job(inbox: Any, endpoint: str, agent: str, count: int) -> Iterator[Any]:
    """Pool job: a coordinator following the broker; ready once its stream is live."""
    from zmesh import Client

    client = Client(endpoint, timeout=30.0)
    h = hist.new()
    got = [0]
    live = threading.Event()
    done = threading.Event()

    def on_event(roster: Any, event: Any) -> None:
        body = event.body
        if body.get("agent") == "bench-probe":
            live.set()
        if body.get("agent") != agent or event.topic not in ("agent.busy", "agent.idle"):
            return
        stamp = body.get("message") or ""
        if stamp.startswith("t="):
            hist.record_ns(h, time.monotonic_ns() - int(stamp[2:]))
            got[0] += 1
            if got[0] >= count:
                done.set()

    client.follow(on_event)
    with Client(endpoint, agent="bench-probe", heartbeat=False, timeout=30.0) as probe:
        while not live.wait(0.2):  # the follow thread has its snapshot and hears events
            probe.report("idle")
    yield None
    done.wait(120)
    client.close()
    yield {"hist": hist.encode(h), "got": got[0]}


def state_change_latency(pool: Any, info: dict[str, Any], count: int, rate: float) -> dict[str, Any]:
    """The harness is the agent; one coordinator worker measures (see the module doc)."""
    from zmesh import Client

    agent = "bench-agent"
    with Client(info["endpoint"], agent=agent, ttl=60.0, timeout=30.0) as c:
        c.report("idle", message="warm")
        rnd = pool.start([("coordinator", (info["endpoint"], agent, count))]).go()
        interval = 1.0 / rate
        start = time.monotonic()
        for i in range(count):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            stamp = f"t={time.monotonic_ns()}"
            if i % 2 == 0:
                c.report("busy", task=f"task-{i}", message=stamp)
            else:
                c.report("idle", message=stamp)
        achieved = count / (time.monotonic() - start)
    [got] = rnd.results()
    h = hist.merge([got["hist"]])
    return {"latency_us": hist.summary(h), "hist": hist.encode(h), "sent": count,
            "lost": count - got["got"], "rate": round(achieved, 1)}


def status_times(endpoint: str, calls: int) -> dict[str, Any]:
    """Median and p95 (µs) of status, agent_list and snapshot, called one after another."""
    from zmesh import Client

    out: dict[str, Any] = {}
    with Client(endpoint, timeout=60.0) as c:
        for name, call in (("status", c.status), ("agent_list", c.agents), ("snapshot", c.snapshot)):
            call()  # warm
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                call()
                times.append((time.perf_counter() - t0) * 1e6)
            times.sort()
            out[name] = {"p50": round(statistics.median(times)), "p95": round(times[int(0.95 * (len(times) - 1))]),
                         "calls": calls}
        out["agents"] = c.status()["agents"]
    return out
