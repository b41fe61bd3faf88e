"""What the broker measures, what each metric means, and when the broker is healthy.

Rules it keeps:

* The loop counts as it goes in :class:`BrokerStats`: plain ints, lists and dicts, written
  and read by the loop's thread only (no locks, no prometheus_client objects on the hot
  path). A request costs a bisect and a few increments when its reply is sent; a commit,
  a few more. One clock read per pass (the broker's): a request's latency runs from the
  pass that read it (for low-priority work deferred to a later pass, from the pass that
  read it too) to the clock read after its reply was sent.
* Anything else (task counts, agents, queues, the store's size) is read when a snapshot
  is taken, in the loop's thread, between two passes (:func:`take_snapshot`): one read
  transaction and copies of the counters. The HTTP thread only ever sees a
  :class:`Snapshot` (zmesh/broker/metrics_http.py).
* :data:`METRICS` names every metric once: name, type, labels, meaning. :func:`families`
  yields exactly these (a test holds it to the table, and docs/OPERATIONS.md is rendered
  from the table by ``python docs/gen_operations.py``). Label values are bounded: ops and
  topics from the protocol's tables (a user's ``msg.<topic>`` counts as ``msg.*``), error
  codes from the error table.
* Health thresholds live here, once (:data:`MAP_USE_MAX`, :data:`SLOW_COMMIT_S`,
  :data:`DISK_FREE_MIN_BYTES`, :data:`DISK_FREE_MIN_RATIO`); :func:`judge` is pure and
  each reason it gives starts with the name of its check.
* No clock here: the broker passes ``now``.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from .. import __version__
from .. import protocol
from ..errors import WIRE_ERRORS, BadRequest, TooLarge, UnknownOp, UnsupportedVersion

if TYPE_CHECKING:
    from ..core import Core, Now, Push
    from ..protocol import Event
    from ..store import Store

# ---------------------------------------------------------------- thresholds (one place)
#: a batch (apply + commit + sync + send) slower than this is logged as a warning, and the
#: broker is degraded while the p95 of its last COMMIT_WINDOW batches is above it
SLOW_COMMIT_S = 0.5
#: batches the commit p95 is taken over, and how many it needs before it is judged
COMMIT_WINDOW = 1000
COMMIT_MIN_SAMPLES = 20
#: the LMDB map this full (used pages / map size) is degraded: when it fills, LMDB grows it
#: (a pause for every write, and a sign map_size is too small for the data)
MAP_USE_MAX = 0.9
#: free space on the data directory's file system below either floor is degraded
DISK_FREE_MIN_BYTES = 256 << 20
DISK_FREE_MIN_RATIO = 0.05

# ---------------------------------------------------------------- bucket bounds (seconds, requests)
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)
COMMIT_BUCKETS = LATENCY_BUCKETS
BATCH_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

#: a request's result besides ``ok`` and the error codes: a null answer (claim_next found
#: nothing), and an answer served from the retry cache (a client's retry of a request applied)
OK, EMPTY, RETRY = "ok", "empty", "retry"
RESULTS = (OK, EMPTY, RETRY, *sorted(WIRE_ERRORS))
#: the ops whose results are claims: claim (success or conflict), claim_next (success or empty)
CLAIM_RESULTS = {("claim", OK): "success", ("claim", "conflict"): "conflict",
                 ("claim_next", OK): "success", ("claim_next", EMPTY): "empty"}
#: what a request that cannot be decoded is refused with (protocol.decode_request)
REFUSALS = tuple(cls.code for cls in (BadRequest, TooLarge, UnknownOp, UnsupportedVersion))
EXPIRY_KINDS = ("lease", "task", "reservation")
#: event topics counted by name; msg.<topic> (a user's broadcast) counts as MSG_TOPICS
MSG_TOPICS = protocol.MESSAGE_PREFIX + "*"
TOPICS = tuple(t for t in protocol.TOPICS if not t.startswith(protocol.MESSAGE_PREFIX)) + (MSG_TOPICS,)
#: claim kinds by the prefix of their resource key (core/schema.py), as labels
CLAIM_KINDS = {"task": "task", "dlv": "delivery", "path": "reservation"}


@dataclass(frozen=True)
class Metric:
    """One metric as exposed (a counter's name ends in ``_total``)."""

    name: str
    kind: str  #: counter, gauge or histogram
    labels: tuple[str, ...]
    doc: str


METRICS: tuple[Metric, ...] = (
    Metric("zmesh_build_info", "gauge", ("version", "protocol", "broker_id"), "always 1: the broker's version, "
           "protocol version and id as labels"),
    Metric("zmesh_uptime_seconds", "gauge", (), "seconds since the broker started"),
    Metric("zmesh_healthy", "gauge", (), "1 when the broker is healthy, 0 when degraded (the reasons: GET /health)"),
    Metric("zmesh_request_duration_seconds", "histogram", ("op",), "from the pass that read a request to its reply "
           "sent (a request that waited, such as a reserve with wait_s, until its answer)"),
    Metric("zmesh_requests_total", "counter", ("op", "result"), "requests answered, by op and result: ok, empty "
           "(a null answer: claim_next found nothing), retry (answered from the retry cache) or the error code"),
    Metric("zmesh_refused_requests_total", "counter", ("code",), "requests refused before any op ran (malformed, "
           "unknown op, bad or oversized field), by error code"),
    Metric("zmesh_claims_total", "counter", ("result",), "task claims: success (claim or claim_next won), conflict "
           "(claim lost to the holder), empty (claim_next found nothing)"),
    Metric("zmesh_commit_batch_size", "histogram", (), "requests applied per write transaction (0: a pass that "
           "only expired leases or claims)"),
    Metric("zmesh_commit_duration_seconds", "histogram", (), "one batch: apply, commit, sync and send its "
           "replies, pushes and events"),
    Metric("zmesh_expiries_total", "counter", ("kind",), "lapses: lease (an agent's lease, with every claim it "
           "held), task (a task claim's own TTL), reservation (a reservation's own TTL)"),
    Metric("zmesh_deliveries_total", "counter", ("priority",), "messages pushed to an agent's connection"),
    Metric("zmesh_redeliveries_total", "counter", (), "pushes of a requires_ack message after its first attempt "
           "(its ack did not come in time, or the agent reconnected)"),
    Metric("zmesh_push_failures_total", "counter", (), "pushes the transport refused (the connection was gone or "
           "full): the message waits for the agent again"),
    Metric("zmesh_events_total", "counter", ("topic",), f"events published, by topic ({MSG_TOPICS}: every "
           "broadcast of publish)"),
    Metric("zmesh_event_seq", "gauge", (), "the sequence number of the latest event"),
    Metric("zmesh_tasks", "gauge", ("state",), "tasks by state (as `zmesh status` counts them)"),
    Metric("zmesh_agents", "gauge", ("state",), "registered agents by presence state"),
    Metric("zmesh_agents_liveness", "gauge", ("liveness",), "registered agents by liveness: alive, or evasive "
           "(missed a heartbeat period)"),
    Metric("zmesh_idle_queue_length", "gauge", (), "idle agents waiting for work"),
    Metric("zmesh_claims_held", "gauge", ("kind",), "claims held now: task, delivery (a requires_ack delivery "
           "awaiting its ack), reservation (a path reservation)"),
    Metric("zmesh_blockers_open", "gauge", (), "blockers raised and not resolved"),
    Metric("zmesh_messages_pending", "gauge", ("priority",), "deliveries waiting for their agent (offline, or "
           "not connected), by message priority"),
    Metric("zmesh_dead_letters", "gauge", (), "deliveries parked after max_deliver attempts without an ack"),
    Metric("zmesh_messages_stored", "gauge", (), "messages kept in the store"),
    Metric("zmesh_low_backlog_requests", "gauge", (), "low-priority requests waiting in memory behind more "
           "urgent work"),
    Metric("zmesh_store_file_bytes", "gauge", (), "size of the LMDB data file (data.mdb)"),
    Metric("zmesh_store_used_bytes", "gauge", (), "bytes of the LMDB map in use (pages up to the last used one)"),
    Metric("zmesh_store_map_bytes", "gauge", (), "the LMDB map size: what the data may grow to before LMDB "
           "grows the map"),
    Metric("zmesh_store_map_use_ratio", "gauge", (), f"used bytes / map size (degraded at {MAP_USE_MAX:g})"),
    Metric("zmesh_journal_seq", "gauge", ("state",), "the journal's last record seq: written (appended, "
           "in the page cache) and synced (fdatasynced: what a full reply may rely on)"),
    Metric("zmesh_journal_flushes_total", "counter", (), "journal fdatasyncs that flushed records (one covers "
           "every batch written before it: group commit)"),
    Metric("zmesh_journal_flush_seconds_total", "counter", (), "time spent in those fdatasyncs (over "
           "zmesh_journal_flushes_total: the disk's flush latency)"),
    Metric("zmesh_journal_written_bytes_total", "counter", (), "journal record bytes appended"),
    Metric("zmesh_journal_segments", "gauge", (), "journal segment files kept (the checkpoint retires older ones)"),
    Metric("zmesh_journal_disk_bytes", "gauge", (), "bytes of the journal's segment files, preallocated space "
           "included"),
    Metric("zmesh_checkpoint_seq", "gauge", (), "the journal seq the latest snapshot holds (a rebuild after "
           "an OS crash replays from there)"),
    Metric("zmesh_checkpoints_total", "counter", (), "checkpoints (snapshots) taken"),
    Metric("zmesh_journal_since_checkpoint_bytes", "gauge", (), "journal bytes written since the last "
           "checkpoint (one is taken at checkpoint_bytes)"),
    Metric("zmesh_disk_free_bytes", "gauge", (), "free space on the data directory's file system"),
    Metric("zmesh_disk_size_bytes", "gauge", (), "size of the data directory's file system"),
)
METRICS_BY_NAME = {m.name: m for m in METRICS}


def quantile(samples: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile of ``samples`` (the value below which a fraction ``q`` of them
    lie, nearest rank); None when there are none."""
    ordered = sorted(samples)
    n = len(ordered)
    return ordered[min(n - 1, int(q * n))] if n else None


class BrokerStats:
    """The loop's running counts (see the module's rules): the loop's thread only."""

    def __init__(self) -> None:
        self.ops = {name: i for i, name in enumerate(protocol.OPS)}
        n = len(self.ops)
        #: per op (by self.ops): latency bucket counts (the last: above every bound) and sum
        self.latency = [[0] * (len(LATENCY_BUCKETS) + 1) for _ in range(n)]
        self.latency_sum = [0.0] * n
        #: per op: result -> requests
        self.results: list[dict[str, int]] = [{} for _ in range(n)]
        #: refusals before any op ran, by code (the ones decoding gives start at 0: a series from the start)
        self.refused: dict[str, int] = dict.fromkeys(REFUSALS, 0)
        self.batch_sizes = [0] * (len(BATCH_BUCKETS) + 1)
        self.batch_sum = 0
        self.commit_times = [0] * (len(COMMIT_BUCKETS) + 1)
        self.commit_sum = 0.0
        #: the last COMMIT_WINDOW batch durations (for the health's p95)
        self.recent: deque[float] = deque(maxlen=COMMIT_WINDOW)
        self.expiries = dict.fromkeys(EXPIRY_KINDS, 0)
        self.deliveries = dict.fromkeys(protocol.PRIORITIES, 0)
        self.redeliveries = 0
        self.push_failures = 0
        self.events = dict.fromkeys(TOPICS, 0)

    # ------------------------------------------------------------ the loop's calls
    def replied(self, items: Iterable[Any], sent: float) -> None:
        """Requests whose replies were sent at ``sent``: each has ``req.op``, ``at`` (the
        clock of the pass that read it) and ``outcome`` (None: it waits, counted when
        answered)."""
        ops, hist, sums, results, bounds = self.ops, self.latency, self.latency_sum, self.results, LATENCY_BUCKETS
        for item in items:
            outcome = item.outcome
            if outcome is None:
                continue
            i = ops[item.req.op]
            took = sent - item.at
            hist[i][bisect_left(bounds, took)] += 1
            sums[i] += took
            counts = results[i]
            counts[outcome] = counts.get(outcome, 0) + 1

    def answered(self, answers: Iterable[tuple[Any, str]], sent: float) -> None:
        """Requests that waited, answered now: (request, outcome) pairs, counted as replied."""
        items = []
        for item, outcome in answers:
            item.outcome = outcome
            items.append(item)
        self.replied(items, sent)

    def committed(self, size: int, took: float, events: list[Event]) -> None:
        """One batch of ``size`` requests took ``took`` seconds and published ``events``."""
        self.batch_sizes[bisect_left(BATCH_BUCKETS, size)] += 1
        self.batch_sum += size
        self.commit_times[bisect_left(COMMIT_BUCKETS, took)] += 1
        self.commit_sum += took
        self.recent.append(took)
        counts = self.events
        for event in events:
            topic = event.topic
            if topic in counts:
                counts[topic] += 1
            else:  # a broadcast's msg.<topic> (never a new label per topic)
                counts[MSG_TOPICS] += 1

    def expired(self, events: list[Event]) -> None:
        """The events of lease and claim expiry a batch produced."""
        for event in events:
            topic, reason = event.topic, event.body.get("reason")
            if topic == "agent.expired":
                self.expiries["lease"] += 1
            elif reason == "claim_expired" and topic == "task.released":
                self.expiries["task"] += 1
            elif reason == "claim_expired" and topic == "reservation.expired":
                self.expiries["reservation"] += 1

    def pushed(self, pushes: list[Push], failed: list[Push]) -> None:
        """Pushes handed to the transport; ``failed`` the ones it refused."""
        refused = {id(p) for p in failed}
        for push in pushes:
            if id(push) in refused:
                continue
            self.deliveries[push.priority] += 1
            if push.attempt > 1:
                self.redeliveries += 1
        self.push_failures += len(failed)

    def refuse(self, code: str) -> None:
        self.refused[code] = self.refused.get(code, 0) + 1

    # ------------------------------------------------------------ reading
    def commit_p95(self) -> float | None:
        """The p95 of the recent batch durations (None below COMMIT_MIN_SAMPLES batches)."""
        return quantile(self.recent, 0.95) if len(self.recent) >= COMMIT_MIN_SAMPLES else None

    def copy(self) -> BrokerStats:
        """A copy another thread may read while the loop goes on."""
        out = BrokerStats.__new__(BrokerStats)
        out.ops = self.ops  # never changes
        out.latency = [list(h) for h in self.latency]
        out.latency_sum = list(self.latency_sum)
        out.results = [dict(r) for r in self.results]
        out.refused = dict(self.refused)
        out.batch_sizes, out.batch_sum = list(self.batch_sizes), self.batch_sum
        out.commit_times, out.commit_sum = list(self.commit_times), self.commit_sum
        out.recent = deque(self.recent, maxlen=COMMIT_WINDOW)
        out.expiries = dict(self.expiries)
        out.deliveries = dict(self.deliveries)
        out.redeliveries, out.push_failures = self.redeliveries, self.push_failures
        out.events = dict(self.events)
        return out

    def claims(self) -> dict[str, int]:
        """Claims by result, from the claim and claim_next results."""
        out = {"success": 0, "conflict": 0, "empty": 0}
        for (op, result), name in CLAIM_RESULTS.items():
            out[name] += self.results[self.ops[op]].get(result, 0)
        return out


# ---------------------------------------------------------------- health
def store_figures(store: Store) -> dict[str, Any]:
    """The LMDB store's size and map use, and the free space of its file system (empty
    for a store that is not LMDB)."""
    used, map_size = store.usage()  # the store's own figures (Store.usage), as the near-full warning reads them
    path = getattr(store, "path", None)
    if not map_size or path is None:  # a memory store: no map, no file
        return {}
    try:
        file_bytes = os.path.getsize(os.path.join(path, "data.mdb"))
    except OSError:
        file_bytes = 0
    fs = os.statvfs(path)
    size = fs.f_blocks * fs.f_frsize
    return {"store_bytes": file_bytes, "used_bytes": used, "map_size": map_size,
            "map_use": round(used / map_size, 4), "disk_free_bytes": fs.f_bavail * fs.f_frsize,
            "disk_size_bytes": size, "data": path}


def judge(figures: dict[str, Any], commit_p95: float | None) -> list[str]:
    """Why the broker is degraded (empty: healthy). Pure: ``figures`` as store_figures
    gives them, ``commit_p95`` in seconds (None: too few batches to judge)."""
    reasons = []
    if figures.get("map_use") is not None and figures["map_use"] >= MAP_USE_MAX:
        reasons.append(f"map_use: the LMDB map is {figures['map_use']:.1%} used ({_mib(figures['used_bytes'])} of "
                       f"{_mib(figures['map_size'])}), at or above {MAP_USE_MAX:.0%}: LMDB grows a full map, "
                       "pausing every write; raise map_size")
    if commit_p95 is not None and commit_p95 > SLOW_COMMIT_S:
        reasons.append(f"commits: p95 {commit_p95 * 1000:.0f} ms over the last {COMMIT_WINDOW} batches is above "
                       f"{SLOW_COMMIT_S * 1000:.0f} ms (the disk or the machine is busy)")
    free, size = figures.get("disk_free_bytes"), figures.get("disk_size_bytes")
    if free is not None and size and (free < DISK_FREE_MIN_BYTES or free / size < DISK_FREE_MIN_RATIO):
        reasons.append(f"disk: {_mib(free)} free ({free / size:.1%}) on the file system of {figures.get('data', 'the data directory')}, "
                       f"below {DISK_FREE_MIN_RATIO:.0%} or {_mib(DISK_FREE_MIN_BYTES)}")
    return reasons


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def health(store: Store, stats: BrokerStats, now: Now, started: float, seq: int) -> dict[str, Any]:
    """The health report the ``health`` op answers and ``GET /health`` serves (its figures
    are the ones a scrape shows; None for a store that is not LMDB)."""
    figures = store_figures(store)
    p95 = stats.commit_p95()
    reasons = judge(figures, p95)
    size = figures.get("disk_size_bytes")
    return {"healthy": not reasons, "reasons": reasons, "broker_id": store.broker_id, "version": __version__,
            "uptime": round(now.wall - started, 3), "seq": seq,
            **{key: figures.get(key) for key in ("store_bytes", "used_bytes", "map_size", "map_use")},
            "commit_p95_ms": None if p95 is None else round(p95 * 1000, 3), "commits": len(stats.recent),
            "disk_free_bytes": figures.get("disk_free_bytes"), "disk_size_bytes": size,
            "disk_free_ratio": round(figures["disk_free_bytes"] / size, 4) if size else None,
            "thresholds": {"map_use": MAP_USE_MAX, "commit_p95_ms": SLOW_COMMIT_S * 1000,
                           "disk_free_bytes": DISK_FREE_MIN_BYTES, "disk_free_ratio": DISK_FREE_MIN_RATIO}}


def unresponsive(broker_id: str, wait_s: float) -> dict[str, Any]:
    """The report when the loop does not answer (GET /health, 503)."""
    reason = f"loop: the broker loop did not answer within {wait_s:g} s (busy, stuck, or still starting)"
    return {"healthy": False, "reasons": [reason], "broker_id": broker_id, "version": __version__}


# ---------------------------------------------------------------- snapshot
@dataclass(frozen=True)
class Snapshot:
    """Everything a scrape shows, taken in the loop's thread at one moment."""

    stats: BrokerStats  #: a copy
    status: dict[str, Any]  #: the status op's answer (tasks, agents by state, evasive, idle queue, blockers, seq)
    messages: dict[str, Any]  #: the msgstats op's answer (pending per priority, dead letters, messages)
    held: dict[str, int]  #: claims held by kind (CLAIM_KINDS' labels)
    low_requests: int
    health: dict[str, Any]  #: the health report (with the store's figures)
    journal: dict[str, int | float]  #: Store.journal_figures ({}: no journal)


def take_snapshot(core: Core, store: Store, stats: BrokerStats, now: Now, *, started: float,
                  low_requests: int) -> Snapshot:
    """In the loop's thread, between two passes: one read transaction and copies."""
    with store.read() as txn:
        b = core.batch(txn, now)
        status = core.handle(b, "status", {})[0]
        messages = core.handle(b, "msgstats", {})[0]
        held = dict.fromkeys(CLAIM_KINDS.values(), 0)
        for keys in core.inspect(txn).held.values():
            for key in keys:
                kind = key.split(":", 1)[0]
                label = CLAIM_KINDS.get(kind, kind)
                held[label] = held.get(label, 0) + 1
    report = health(store, stats, now, started, status["seq"])
    return Snapshot(stats=stats.copy(), status=status, messages=messages, held=held, low_requests=low_requests,
                    health=report, journal=store.journal_figures())


# ---------------------------------------------------------------- exposition
def families(s: Snapshot) -> Iterator[Any]:
    """The snapshot as prometheus_client metric families, one per METRICS entry, in its order."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.utils import floatToGoString

    kinds = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "histogram": HistogramMetricFamily}

    def family(name: str) -> Any:
        m = METRICS_BY_NAME[name]
        base = name[:-len("_total")] if m.kind == "counter" else name
        return kinds[m.kind](base, m.doc, labels=m.labels)

    def buckets(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip(bounds, counts):
            total += n
            out.append((floatToGoString(bound), total))
        out.append(("+Inf", total + counts[-1]))
        return out

    st, status, h = s.stats, s.status, s.health
    f = family("zmesh_build_info")
    f.add_metric([__version__, str(protocol.PROTOCOL_VERSION), h["broker_id"]], 1)
    yield f
    yield _one(family("zmesh_uptime_seconds"), h["uptime"])
    yield _one(family("zmesh_healthy"), 1 if h["healthy"] else 0)
    f = family("zmesh_request_duration_seconds")
    requests = family("zmesh_requests_total")
    for op, i in st.ops.items():
        if sum(st.latency[i]):  # ops never asked for show no series
            f.add_metric([op], buckets(LATENCY_BUCKETS, st.latency[i]), st.latency_sum[i])
        for result, n in sorted(st.results[i].items()):
            requests.add_metric([op, result], n)
    yield f
    yield requests
    yield _labelled(family("zmesh_refused_requests_total"), st.refused)
    yield _labelled(family("zmesh_claims_total"), st.claims())
    f = family("zmesh_commit_batch_size")
    f.add_metric([], buckets(BATCH_BUCKETS, st.batch_sizes), st.batch_sum)
    yield f
    f = family("zmesh_commit_duration_seconds")
    f.add_metric([], buckets(COMMIT_BUCKETS, st.commit_times), st.commit_sum)
    yield f
    yield _labelled(family("zmesh_expiries_total"), st.expiries)
    yield _labelled(family("zmesh_deliveries_total"), st.deliveries)
    yield _one(family("zmesh_redeliveries_total"), st.redeliveries)
    yield _one(family("zmesh_push_failures_total"), st.push_failures)
    yield _labelled(family("zmesh_events_total"), st.events)
    yield _one(family("zmesh_event_seq"), status["seq"])
    yield _labelled(family("zmesh_tasks"), status["tasks"])
    yield _labelled(family("zmesh_agents"), status["states"])
    yield _labelled(family("zmesh_agents_liveness"), {"alive": status["agents"] - status["evasive"],
                                                      "evasive": status["evasive"]})
    yield _one(family("zmesh_idle_queue_length"), len(status["idle_queue"]))
    yield _labelled(family("zmesh_claims_held"), s.held)
    yield _one(family("zmesh_blockers_open"), status["blockers"])
    yield _labelled(family("zmesh_messages_pending"), s.messages["pending"])
    yield _one(family("zmesh_dead_letters"), s.messages["dead"])
    yield _one(family("zmesh_messages_stored"), s.messages["messages"])
    yield _one(family("zmesh_low_backlog_requests"), s.low_requests)
    def plain(values: dict[str, Any], pairs: tuple[tuple[str, str], ...]) -> Iterator[Any]:
        """Unlabelled families, each with its value when ``values`` has one (a store that is
        not LMDB has no figures, one without a journal no journal: the family comes empty)."""
        for name, key in pairs:
            f = family(name)
            if values.get(key) is not None:
                f.add_metric([], values[key])
            yield f

    figures = dict(h, map_use=h["used_bytes"] / h["map_size"] if h["map_size"] else None)  # unrounded
    yield from plain(figures, (("zmesh_store_file_bytes", "store_bytes"), ("zmesh_store_used_bytes", "used_bytes"),
                               ("zmesh_store_map_bytes", "map_size"), ("zmesh_store_map_use_ratio", "map_use")))
    j = s.journal
    f = family("zmesh_journal_seq")
    if j:
        f.add_metric(["written"], j["written_seq"])
        f.add_metric(["synced"], j["synced_seq"])
    yield f
    yield from plain(j, (("zmesh_journal_flushes_total", "flushes"), ("zmesh_journal_flush_seconds_total", "flush_seconds"),
                         ("zmesh_journal_written_bytes_total", "written_bytes"), ("zmesh_journal_segments", "segments"),
                         ("zmesh_journal_disk_bytes", "disk_bytes"), ("zmesh_checkpoint_seq", "checkpoint_seq"),
                         ("zmesh_checkpoints_total", "checkpoints"),
                         ("zmesh_journal_since_checkpoint_bytes", "since_checkpoint_bytes")))
    yield from plain(figures, (("zmesh_disk_free_bytes", "disk_free_bytes"), ("zmesh_disk_size_bytes", "disk_size_bytes")))


def _one(family: Any, value: float) -> Any:
    family.add_metric([], value)
    return family


def _labelled(family: Any, values: dict[str, int]) -> Any:
    for label, value in values.items():
        family.add_metric([label], value)
    return family
