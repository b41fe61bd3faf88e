"""The broker loop: ROUTER + PUB sockets, group commit, deadlines, discovery. Thin.

One pass of the loop::

    poll (until a request arrives or the next lease/claim deadline)
    drain every waiting request from every ROUTER socket (up to MAX_BATCH)
    one LMDB write txn: decode + apply each request in arrival order, then expire due leases
    commit: ONE journal record for the whole batch (group commit), LMDB unsynced
    flush: ONE fdatasync of the journal (``full``): here when nothing else waits, else in the
      store's thread while the next batch is applied (one flush then covers several batches)
    send the replies, then publish the events (never before the flush covers their batch:
      the outbox, outbox.py)
    between passes: a snapshot for the metrics endpoint when it asked (zmesh/broker/metrics.py)

A batch is applied by broker_apply.py (one transaction, the retry cache, ``internal`` for a
request that crashes the core); the sockets are bound by broker_sockets.py.

A stop (SIGTERM, SIGINT) is graceful: the discovery record is withdrawn, the requests
already received are answered and the deferred low-priority work applied (at most
``drain_timeout`` seconds; a second signal cuts it short), then the claim index is written
and the store closed. Every reply sent was committed first, so an acknowledged write is
never lost by a stop. Under systemd (``Type=notify``) the broker says READY=1 when it
serves and STOPPING=1 when it drains (sd_notify.py).

This is the module that reads the clock for the core, which gets ``now`` from here
(broker_jobs.py only times a backup). A request
that crashes the core (a bug) is answered ``internal`` and the rest of its batch is applied
again without it; the loop never dies of input.

What the log tells an operator (logger ``zmesh.broker``): start (endpoints, recovery: what
was recovered and how long it took), each lease that lapsed and the claims it released,
each claim whose own TTL lapsed, bad or oversized requests with the peer's address and the
reason (rate-limited per peer), slow commits (rate-limited), stop.

What one client can make the broker hold is bounded, so a flood or a stalled reader never
grows its memory without limit and never starves the others:

* **Fair share.** The ROUTER fair-queues its peers (libzmq reads one message from each
  connection with input in turn), so a batch drained while one client floods holds every
  other client's waiting request too: a flood costs the others at most one batch.
* **Per-connection queues** are capped in messages (libzmq's high-water marks):
  :data:`PEER_RCVHWM` requests waiting to be read (then TCP pushes back on the sender),
  :data:`PEER_SNDHWM` replies and pushes not yet taken by a client (more are dropped: a
  reply is re-sent from the retry cache when the client retries, a push stays pending in
  the store; so a connection keeps fewer requests than that in flight), :data:`SUB_SNDHWM` events per subscriber (more are dropped for that
  subscriber, which sees the gap in seq and replays from the event log).
* **The broker's own buffers**: the retry cache is bounded in replies and bytes and keeps
  right-sized copies (zmesh/broker/retries.py); a batch is freed as soon as it is answered (the
  store drops its commit hooks, which held it in a cycle); low-priority work deferred behind urgent work at most
  :data:`LOW_BACKLOG_BYTES` (beyond it, it is applied at once).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from typing import Any

import zmq

from .. import __version__
from .. import protocol
from ..util.logs import RateLimited
from ..config import BrokerConfig
from ..errors import StoreError
from ..core import Core, Now, Settings
from ..protocol import DecodeError, Event
from ..transport.sockets import EVENTS, NOBLOCK, POLLIN, get_option as _get, peer_address, recv_message
# the per-connection queue limits (see above) are named here too: tests and docs read them
from .sockets import PEER_RCVHWM, PEER_SNDHWM, SUB_SNDHWM, open_sockets, remove_ipc_files  # noqa: F401
from ..protocol.identity import split_user_id
from ..transport.keys import load_token
from .apply import Applier, Item, Poison
from .lanes import LOW_BACKLOG_BYTES, LOW_DRAIN, Lanes, lane  # noqa: F401  (named in the docstring)
from .jobs import Backups
# SLOW_COMMIT_S: a batch slower than this is logged as a warning (a health threshold too)
from .metrics import MAP_USE_MAX, BrokerStats, health, take_snapshot, unresponsive
from .metrics_http import ANSWER_TIMEOUT_S, Asks, MetricsServer
from .sd_notify import notify
from .outbox import Out, Outputs
from ..store import Store, StoreFull, open_store

log = logging.getLogger("zmesh.broker")
#: warnings about peers and slow commits: at most one line per key per interval
_limited = RateLimited(log, interval=10.0)

#: most requests applied in one transaction; bounds the latency a batch adds to its first request
MAX_BATCH = 512
#: the store's map use is looked at this often; past MAP_USE_MAX (metrics.py), a warning
USAGE_CHECK_S = 5.0

#: delivery latencies kept per priority for msgstats
LATENCY_SAMPLES = 1000


#: gen-0 threshold for a broker process: a claim allocates a dozen short-lived dicts and
#: makes no reference cycles, so the default (700) ran a collection every ~60 claims for
#: nothing; measured at ~5 µs of the ~75 µs of broker CPU per claim (8 clients)
GC_THRESHOLD = (20_000, 50, 50)


def tune_gc() -> None:
    """For a process that is a broker and nothing else (``zmesh broker``): freeze what
    start-up allocated (never collectable garbage) and collect young objects less often.
    Not done by Broker itself, which may be embedded in a process with other needs."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


class Broker(Outputs):
    """Owns the sockets and the store; ``serve()`` runs until ``stop()`` (or a signal)."""

    def __init__(self, config: BrokerConfig, *, store: Store | None = None, context: zmq.Context | None = None) -> None:
        self.config = config
        #: the store is given (tests), or opened per config: LMDB, or a replica of the mesh's log on etcd
        self.store: Store = store if store is not None else open_store(
            config.data, durability=config.durability, map_size=config.map_size, url=config.store,
            mesh=config.mesh, leader_ttl=config.leader_ttl)
        self.core = Core(Settings(default_ttl=config.default_ttl, event_log_size=config.event_log_size,
                                  ack_wait=config.ack_wait, message_retention=config.message_retention,
                                  message_max_age=config.message_max_age, audit=config.audit,
                                  audit_retention=config.audit_retention))
        self._ctx = context or zmq.Context.instance()
        self._routers: list[zmq.Socket] = []
        self._pub: zmq.Socket | None = None
        self._backups = Backups(self.store, self.store.broker_id, self._wake,
                                (self.config.key_path, self.config.authorized_path))
        self._applier = Applier(self.core, self.store, answer={"hello": self._hello},
                                extend={"status": lambda b, body, item: {**body, **self._info()},
                                        "msgstats": lambda b, body, item: {**body, "latency_ms": self._latency()},
                                        "backup": self._backups.extend,
                                        "health": lambda b, body, item: health(self.store, self.stats, b.now,
                                                                               self.started, body["seq"])})
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._running = False
        #: stop() was called: kept apart from _running, so a SIGTERM that lands while
        #: serve() is starting (after the handler is in, before the loop) is not lost
        self._stop_asked = False
        self._stops = 0
        self._next_usage_check = 0.0
        self._advertiser: Any = None
        self._gate: Any = None  # the ZAP handler when secure (zmesh/broker/zap.py)
        self._adv_thread: threading.Thread | None = None
        self.started = time.time()
        self.endpoints: list[str] = []
        self.pub_endpoints: list[str] = []
        self.batches = 0
        self._seq = 0  # latest event published, for the PUB heartbeat
        self._next_hb = 0.0
        self.requests = 0
        self._ipc_paths: list[str] = []  # ipc socket files we bound: removed on close
        self._recovered = False  # the core holds the store's state: a checkpoint may be written
        #: low-priority requests waiting for a pass with nothing more urgent (with arrival time)
        self._lanes: Lanes[Item] = Lanes(config.low_batch, MAX_BATCH)  # the deferred low work
        self._urgent_need = 0  # the journal seq the latest urgent transaction needs on disk
        #: seconds from send to push, per priority: the last LATENCY_SAMPLES (msgstats)
        self.latency: dict[str, deque[float]] = {p: deque(maxlen=LATENCY_SAMPLES) for p in protocol.PRIORITIES}
        self.stats = BrokerStats()  # what the loop counts (zmesh/broker/metrics.py)
        #: snapshot requests of the metrics endpoint's threads, answered by the loop between passes
        self._asks = Asks(self._wake)
        self._http: MetricsServer | None = None
        self.metrics_url: str | None = None  # http://HOST:PORT as bound (port 0 resolved), None: off
        #: outputs of committed transactions waiting for their journal record's flush, in order
        self._outbox: deque[Out] = deque()
        self._flush_pending = False  # a flush was asked of the store's thread
        self._flushed = False  # the store's thread finished one (set from that thread)
        self.store.pipeline(self._on_durable)

    # ------------------------------------------------------------ setup
    def bind(self) -> None:
        token = None  # read first: a bad token file binds nothing
        if self.config.metrics_token:
            token = load_token(self.config.metrics_token, "metrics_token")
        if self.config.secure:  # the gate starts before any bind: nothing is taken unauthenticated
            from .zap import open_gate

            self._gate = open_gate(self._ctx, self.config)
        bound = open_sockets(self._ctx, self.config, self._gate)
        self.endpoints, self.pub_endpoints, self._ipc_paths = bound.endpoints, bound.pub_endpoints, bound.ipc_paths
        self._pub = bound.pub
        self._routers = [bound.router]
        self.store.advertise(self.endpoints, self.pub_endpoints)  # with an etcd store: in the leader key
        if self.config.metrics:  # raises OSError naming the address, as a taken ROUTER port does
            self._http = MetricsServer(self.config.metrics, self._asks,
                                       lambda: unresponsive(self.store.broker_id, ANSWER_TIMEOUT_S), token)
            self._http.start()
            self.metrics_url = self._http.address
        started = time.monotonic()
        with self.store.write() as txn:
            recovery = self.core.recover(txn, self._now())
            self._seq = self.core.last_seq(txn)
        self._recovered = True
        took = time.monotonic() - started
        opened = self.store.recovery  # the store's own part: trusted or rebuilt, the journal replayed
        log.info("recovered in %.3f s: %d agent lease(s) restarted with a full TTL, %d claim(s) held, "
                 "%s, %d old event(s) trimmed, %d audit record(s) past audit_retention trimmed, event seq %d%s", took,
                 recovery.agents, recovery.claims,
                 "claims read from the clean-shutdown index" if recovery.claim_index else
                 "every task scanned for claims (no clean-shutdown index: first start or after a crash)",
                 recovery.trimmed_events, recovery.trimmed_audit, self._seq,
                 "" if not opened else f"; store: {opened['why']}"
                 f"{', ' + opened['rebuilt'] if opened.get('rebuilt') else ''}, {opened['replayed']} journal "
                 f"record(s) replayed to seq {opened['seq']} in {opened['seconds']:.3f} s",
                 extra={"event": "broker.recovered", "seconds": round(took, 3), "agents": recovery.agents,
                        "claims": recovery.claims, "claim_index": recovery.claim_index,
                        "trimmed_events": recovery.trimmed_events, "trimmed_audit": recovery.trimmed_audit,
                        "seq": self._seq, "store": opened})

    def _advertise(self) -> None:
        if not self.config.discovery:
            return
        tcp = [ep for ep in self.endpoints if ep.startswith("tcp://")]
        pub_tcp = [ep for ep in self.pub_endpoints if ep.startswith("tcp://")]
        if not tcp or not pub_tcp:
            return
        try:
            from ..discovery import Advertiser

            self._advertiser = Advertiser(
                broker_id=self.store.broker_id, port=int(tcp[0].rsplit(":", 1)[1]),
                pub_port=int(pub_tcp[0].rsplit(":", 1)[1]), version=__version__,
                interfaces=self.config.interfaces or None, mesh=self.config.mesh,
                key=self._gate.keys.public.decode("ascii") if self._gate is not None else None)
            self._advertiser.start()
        except Exception as exc:  # discovery is a convenience; the broker serves without it
            log.warning("zeroconf advertisement failed (%s); clients need --broker", exc,
                        extra={"event": "discovery.failed", "error": str(exc)})
            self._advertiser = None

    @staticmethod
    def _now() -> Now:
        return Now(time.monotonic(), time.time())

    # ------------------------------------------------------------ loop
    def _wake(self) -> None:
        """Wake the loop's poll (from another thread or a signal handler)."""
        try:
            self._wake_w.send(b"x")
        except OSError:  # its buffer is full (the loop wakes anyway) or it is closed
            pass

    def stop(self) -> None:
        """Safe from a signal handler or another thread, and before serve() starts. The
        first call drains (see _drain_on_stop); a second one cuts the drain short."""
        self._stops += 1
        self._stop_asked = True
        self._running = False
        self._wake()

    def serve(self, *, install_signals: bool = True) -> None:
        if self._pub is None:
            self.bind()
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self.stop())
            # a signal may land on a libzmq thread, so the main thread's poll never sees
            # EINTR; the wakeup fd makes the C handler wake the poll from any thread
            signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        # zeroconf takes ~2 s to probe and announce: serve meanwhile
        self._adv_thread = threading.Thread(target=self._advertise, name="zmesh-advertise", daemon=True)
        self._adv_thread.start()
        poller = zmq.Poller()
        for router in self._routers:
            poller.register(router, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        self._running = True
        log.info("zmesh broker ready: id=%s router=%s pub=%s data=%s durability=%s metrics=%s pid=%d",
                 self.store.broker_id, ",".join(self.endpoints), ",".join(self.pub_endpoints),
                 self.config.data, self.config.durability, self.metrics_url or "off", os.getpid(),
                 extra={"event": "broker.ready", "broker_id": self.store.broker_id, "version": __version__,
                        "router": self.endpoints, "pub": self.pub_endpoints, "data": self.config.data,
                        "durability": self.config.durability, "secure": self._gate is not None,
                        "mesh": self.config.mesh, "metrics": self.metrics_url, "pid": os.getpid()})
        notify("READY=1", f"STATUS=serving {','.join(self.endpoints)}", f"MAINPID={os.getpid()}")
        try:
            while self._running and not self._stop_asked:
                if self.store.broken is not None:  # a flush failed, or the replica was deposed
                    raise StoreError(self.store.broken)
                deadline = min(self.core.next_deadline() or self._next_hb, self._next_hb)
                timeout = 0.0 if self._lanes else max(0.0, deadline - time.monotonic()) * 1000
                # milliseconds; pyzmq takes a float (its stub says int)
                ready = dict(poller.poll(min(timeout, 60_000) + 1))  # type: ignore[arg-type]
                if self._wake_r.fileno() in ready:
                    try:
                        self._wake_r.recv(4096)
                    except BlockingIOError:
                        pass
                self._pass([r for r in self._routers if r in ready])
                self._settle()
                for router, frames in self._backups.replies():
                    self._send(router, frames)
                if self._asks.waiting:  # the metrics endpoint asked (and woke the poll)
                    self._asks.answer(self._snapshot)
                now = time.monotonic()
                if now >= self._next_hb:
                    self._publish(Event(protocol.HEARTBEAT_TOPIC, self._seq, {}))
                if now >= self._next_usage_check:
                    self._check_usage(now)
            if self._stop_asked:
                self._drain_on_stop()
        finally:
            if install_signals:
                signal.set_wakeup_fd(-1)
            self.close()

    def _drain_on_stop(self) -> None:
        """A graceful stop (SIGTERM, SIGINT, stop()): withdraw the discovery record so no
        client joins a leaving broker, then answer what was already received: passes go on
        while a read finds a full batch waiting (the queues as they were), then the deferred
        low-priority work is applied; a request that arrives after that is new work, left
        for the next broker (its client resends). Bounded by ``drain_timeout``; a second
        signal cuts it short. close() then writes the claim index."""
        started = time.monotonic()
        deadline = started + self.config.drain_timeout
        notify("STOPPING=1", "STATUS=draining")
        self._withdraw()
        before = self.requests
        while time.monotonic() < deadline and self._stops < 2:
            readable = [r for r in self._routers if int(_get(r, EVENTS)) & POLLIN]
            if not readable:
                break
            if self._pass(readable, MAX_BATCH) < MAX_BATCH:
                break
            self._settle()
        while self._lanes and time.monotonic() < deadline and self._stops < 2:
            self._commit(self._lanes.take(MAX_BATCH), urgent=False)
        self._flush_all()
        left = len(self._lanes)
        log.info("drained in %.3f s: answered %d request(s) received before the stop%s", time.monotonic() - started,
                 self.requests - before, f"; {left} low-priority request(s) left unanswered (their clients resend)"
                 if left else "", extra={"event": "broker.drained", "seconds": round(time.monotonic() - started, 3),
                                          "answered": self.requests - before, "unanswered": left})

    def _drain(self, routers: list[zmq.Socket], most: int) -> list[tuple[zmq.Socket, list[bytes], zmq.Frame]]:
        """Every waiting request (up to ``most``) from the routers poll found readable:
        an idle router (the IPC one, for TCP clients) costs no failed read per pass. Each
        comes with its first frame, whose Peer-Address names a misbehaving peer in the log."""
        batch: list[tuple[zmq.Socket, list[bytes], zmq.Frame]] = []
        for router in routers:
            # after the first message, one ZMQ_EVENTS question (1.5 µs) says whether more
            # are waiting: a lone request (the latency case) never pays for a zmq.Again
            # (3.3 µs, more with cold caches); a burst ends on one Again, not a question
            # per message
            try:
                frames, first = recv_message(router, NOBLOCK)
            except zmq.Again:  # poll saw an edge that another read consumed
                continue
            batch.append((router, frames, first))
            if not int(_get(router, EVENTS)) & POLLIN:
                continue
            while len(batch) < most:
                try:
                    frames, first = recv_message(router, NOBLOCK)
                except zmq.Again:
                    break
                batch.append((router, frames, first))
        return batch

    def _decode(self, batch: list[tuple[zmq.Socket, list[bytes], zmq.Frame]], now: float
                ) -> tuple[list[Item], list[tuple[zmq.Socket, list[bytes]]]]:
        """Each drained request decoded, with its lane and ``now`` (when it was read); a request
        that cannot be served is answered at once (it changes nothing, so its reply waits for
        no commit)."""
        items: list[Item] = []
        refused: list[tuple[zmq.Socket, list[bytes]]] = []
        secure = self._gate is not None
        for router, frames, first in batch:
            ident, request = frames[0], frames[1:]
            try:
                req = protocol.decode_request(request)
            except DecodeError as exc:
                refused.append((router, [ident, *protocol.encode_error(exc.req_id, exc.error)]))
                self.stats.refuse(exc.error.code)
                peer = peer_address(first)
                _limited.warning("bad:" + peer, "refused a request from %s: %s", peer, exc.error,
                                 extra={"event": "request.refused", "peer": peer, "code": exc.error.code,
                                        "reason": exc.error.message})
                continue
            lane_ = lane(req.op, req.body)
            if secure:  # the role and key ZAP admitted the connection with (core/identity.py)
                role, key = split_user_id(str(first.get("User-Id")))
                items.append(Item(router, ident, request[1], req, lane_, now, key, role))
            else:
                items.append(Item(router, ident, request[1], req, lane_, now))
        return items, refused

    def _pass(self, readable: list[zmq.Socket], most: int = 0) -> int:
        """One pass over what ``readable`` routers hold (up to ``most`` requests; by default
        a full batch, or LOW_DRAIN while low work waits); returns how many it read."""
        drained = self._drain(readable, most or (LOW_DRAIN if self._lanes else MAX_BATCH))
        now = time.monotonic()  # the pass's one clock read: when its requests were read
        items, refused = self._decode(drained, now)
        for router, frames in refused:
            self._send(router, frames)
        urgent = self._lanes.split(items, now)
        deadline = self.core.next_deadline()
        if urgent or (deadline is not None and deadline <= now):
            self._commit(urgent)
        due = self._lanes.due(bool(urgent), now)  # low work, in a transaction of its own
        if due:
            if urgent:  # the urgent outputs leave first (_settle flushes them inline while low work waits)
                self._settle()
            self._commit(self._lanes.take(due), urgent=False)
        return len(drained)

    def _commit(self, items: list[Item], urgent: bool = True) -> None:
        """Apply ``items`` (and expiry) in one transaction; what it produced (replies,
        pushes, events) waits in the outbox until the journal has it on disk (_settle)."""
        poisoned: set[int] = set()
        started = time.monotonic()
        while True:
            try:
                replies, events, expired, pushes, answered = self._applier.apply(items, poisoned, self._now())
                break
            except StoreFull as exc:
                log.warning("%s", exc, extra={"event": "store.full", "map_size": self.store.usage()[1]})
            except Poison as exc:
                poisoned.add(exc.index)
                with self.store.read() as txn:  # the rolled-back batch may have touched it
                    self.core.resync(txn, self._now())
        # a read's reply waits too: it may tell of writes not yet on disk
        if urgent:
            self._urgent_need = self.store.applied
        self._outbox.append(Out(self.store.applied, items, replies, events, expired, pushes, answered, started))

    def _snapshot(self) -> Any:
        """For the metrics endpoint, in the loop's thread (zmesh/broker/metrics.py)."""
        return take_snapshot(self.core, self.store, self.stats, self._now(), started=self.started,
                             low_requests=len(self._lanes))

    def _latency(self) -> dict[str, Any]:
        """Delivery latency per priority (message sent -> pushed to a connected agent), over
        the last LATENCY_SAMPLES pushes of each."""
        out = {}
        for priority, samples in self.latency.items():
            ordered = sorted(samples)
            n = len(ordered)
            out[priority] = {"n": n, **{name: round(ordered[min(n - 1, int(q * n))] * 1000, 3) if n else None
                                        for name, q in (("p50", 0.5), ("p95", 0.95))}}
        return out

    def _hello(self, ctx: Any, body: dict[str, Any]) -> dict[str, Any]:
        return {"broker_id": self.store.broker_id, "protocol": protocol.PROTOCOL_VERSION,
                "version": __version__, "endpoints": self.endpoints, "pub": self.pub_endpoints,
                "durability": self.store.durability, "default_ttl": self.config.default_ttl,
                "seq": self.core.seq(ctx)}

    def _info(self) -> dict[str, Any]:
        return {"broker_id": self.store.broker_id, "version": __version__, "pid": os.getpid(),
                "durability": self.store.durability, "uptime": round(time.time() - self.started, 3),
                "endpoints": self.endpoints, "pub": self.pub_endpoints, "data": self.config.data,
                "batches": self.batches, "requests": self.requests}

    def _check_usage(self, now: float) -> None:
        """The store's map use, every USAGE_CHECK_S: past MAP_USE_MAX, a warning (rate-limited)."""
        self._next_usage_check = now + USAGE_CHECK_S
        used, size = self.store.usage()
        if size and used >= MAP_USE_MAX * size:
            _limited.warning("near_full", "store near full: %d of %d bytes of the LMDB map in use (%.0f%%); it grows "
                             "when full, if the disk has room (map_size, df %s)", used, size, 100 * used / size,
                             self.config.data, extra={"event": "store.near_full", "used": used, "map_size": size})

    def _withdraw(self) -> None:
        """Take the discovery record off the LAN (the advertiser says goodbye)."""
        if self._adv_thread is not None:
            self._adv_thread.join(10)
            self._adv_thread = None
        if self._advertiser is not None:
            try:
                self._advertiser.close()
            except Exception as exc:  # pragma: no cover
                log.debug("advertiser close: %s", exc)
            self._advertiser = None

    def close(self) -> None:
        self._running = False
        if self._http is not None:  # first: its waiting requests answer 503 at once
            self._http.close()
            self._http = None
        self._withdraw()
        if self._outbox and self._routers:  # committed before the stop: flushed, then answered
            try:
                self._flush_all()
            except Exception as exc:
                log.warning("%d batch(es) of replies not sent at the stop (%s); their clients resend",
                            len(self._outbox), exc)
        for router in self._routers:
            router.close()
        self._routers = []
        if self._pub is not None:
            self._pub.close()
            self._pub = None
        self._wake_r.close()
        self._wake_w.close()
        if self._gate is not None:
            self._gate.stop()
            self._gate = None
        remove_ipc_files(self._ipc_paths)
        self._backups.wait()  # LMDB must not close under a running copy
        if self._recovered:  # a broker that never recovered knows no claims: write no index
            try:  # lets the next start skip reading every task (Core.checkpoint)
                with self.store.write() as txn:
                    self.core.checkpoint(txn)
            except Exception as exc:
                log.warning("no claim index written on shutdown (%s): the next start scans the tasks", exc)
        self.store.close()
        if self._recovered:
            log.info("zmesh broker stopped", extra={"event": "broker.stopped", "requests": self.requests,
                                                    "uptime": round(time.time() - self.started, 3)})
