"""The one place zmesh talks to etcd: a thin layer over the gRPC stubs that etcd-sdk-python
(module ``pyetcd``) generates from etcd's own protos. Another client swaps in by rewriting
this module alone; nothing else in zmesh imports grpc or pyetcd.

Rules it keeps:

* Every call has a deadline (``timeout``). A member that does not answer within it is an
  :class:`EtcdUnavailable`, never a hang; the caller decides whether to retry.
* Every member is an address of one gRPC channel, balanced round robin. A dead member costs
  the calls that were on it; gRPC then skips it and reconnects in the background. Nothing
  is banned for minutes (python-etcd3's failover bans a failed endpoint for 300 s).
* A range read is paginated (``PAGE`` keys a call), so no reply nears gRPC's 4 MiB limit.
* A transaction takes at most :data:`MAX_TXN_OPS` operations and :data:`MAX_TXN_BYTES`
  bytes (etcd's defaults: 128 ops, 1.5 MiB requests). A bigger one is refused here with
  :class:`EtcdTooLarge`, before it is sent: the caller splits.
* A watch runs in a thread of its own. It resumes from the revision after the last one it
  delivered when its member fails. When etcd has compacted the revisions it needs, it
  reports :class:`EtcdCompacted` to ``on_error`` and ends: it never skips revisions.
* Results are plain :class:`KV` tuples of bytes and ints, never protobuf objects.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NamedTuple, Sequence

from ..errors import StoreError

log = logging.getLogger(__name__)

#: etcd's limits (server defaults: --max-txn-ops 128, --max-request-bytes 1.5 MiB)
MAX_TXN_OPS = 128
MAX_TXN_BYTES = 1_572_864
#: keys a range call returns at most (the rest come in further calls)
PAGE = 1000
#: room kept under MAX_TXN_BYTES for the request's own framing
_TXN_FRAMING = 64


class EtcdError(StoreError):
    """etcd refused or failed a call."""


class EtcdUnavailable(EtcdError):
    """No member answered within the deadline (or the cluster has no leader)."""


class EtcdCompacted(EtcdError):
    """The revisions a watch or read needs are compacted away; ``revision`` is the oldest kept."""

    def __init__(self, message: str, revision: int) -> None:
        super().__init__(message)
        self.revision = revision


class EtcdTooLarge(EtcdError):
    """A transaction above etcd's limits (ops or bytes): the caller splits it."""


class KV(NamedTuple):
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True)
class Compare:
    """One guard of a transaction: ``target`` of ``key`` compared with ``value``.
    target: ``create`` / ``mod`` (revisions), ``version``, ``value`` (bytes); op: ``==``,
    ``!=``, ``<``, ``>``."""

    key: bytes
    target: str
    op: str
    value: int | bytes


@dataclass(frozen=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: bytes
    #: delete every key in [key, range_end) (b"": the one key)
    range_end: bytes = b""


@dataclass(frozen=True)
class Get:
    key: bytes


Op = Put | Delete | Get


@dataclass
class TxnResult:
    succeeded: bool
    #: the cluster's revision after the txn (a successful write txn's own revision)
    revision: int
    #: per Get op of the branch that ran, the key found (None: absent)
    got: list[KV | None] = field(default_factory=list)


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key beginning with ``prefix``."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\x00"  # every key
    return trimmed[:-1] + bytes((trimmed[-1] + 1,))


def parse_endpoints(spec: str) -> list[tuple[str, int]]:
    """``h1:p1,h2:p2`` (an ``etcd://`` prefix allowed) as (host, port) pairs; raises
    ValueError naming what is wrong."""
    body = spec[len("etcd://"):] if spec.startswith("etcd://") else spec
    out = []
    for part in body.split(","):
        part = part.strip()
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"etcd endpoint {part!r} is not host:port")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise ValueError("no etcd endpoint given")
    return out


def _target(endpoints: Sequence[tuple[str, int]]) -> str:
    """One gRPC target naming every member by address (gRPC's ipv4:/ipv6: list form)."""
    v4: list[str] = []
    v6: list[str] = []
    for host, port in endpoints:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise EtcdUnavailable(f"etcd endpoint {host}:{port} does not resolve: {exc}") from None
            addr = ipaddress.ip_address(infos[0][4][0])
        (v4 if addr.version == 4 else v6).append(f"{addr}:{port}" if addr.version == 4 else f"[{addr}]:{port}")
    if v4 and v6:
        raise ValueError("etcd endpoints mix IPv4 and IPv6 addresses: name them in one family")
    return ("ipv4:" + ",".join(v4)) if v4 else ("ipv6:" + ",".join(v6))


class EtcdKV:
    """A connection to an etcd cluster (every member in one channel)."""

    def __init__(self, endpoints: Sequence[tuple[str, int]], timeout: float = 2.0) -> None:
        try:
            import grpc
            from pyetcd import etcdrpc
            from pyetcd.etcdrpc import kv_pb2
        except ImportError as exc:
            raise EtcdError(f"an etcd store needs the etcd extra: pip install 'zmesh[etcd]' ({exc})") from None

        self._grpc, self._rpc, self._kv_pb2 = grpc, etcdrpc, kv_pb2
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._channel = grpc.insecure_channel(_target(self.endpoints), options=[
            ("grpc.lb_policy_name", "round_robin"),
            # a member that stops answering (SIGSTOP, a cut link) is noticed by pings
            # (etcd allows one every 5 s: --grpc-keepalive-min-time)
            ("grpc.keepalive_time_ms", 5000),
            ("grpc.keepalive_timeout_ms", 2000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.max_receive_message_length", 8 << 20),
        ])
        self._kv = etcdrpc.KVStub(self._channel)
        self._lease = etcdrpc.LeaseStub(self._channel)
        self._watch = etcdrpc.WatchStub(self._channel)
        self._maint = etcdrpc.MaintenanceStub(self._channel)
        self._watches: list[Watch] = []
        self._closed = False

    # ------------------------------------------------------------------ errors
    def _call(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        grpc = self._grpc
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: Any) -> EtcdError:
        grpc = self._grpc
        code, detail = exc.code(), exc.details() or ""
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            return EtcdUnavailable(f"etcd did not answer ({code.name.lower()}: {detail})")
        if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in detail:
            return EtcdCompacted(f"etcd: {detail}", 0)
        if code == grpc.StatusCode.INVALID_ARGUMENT and ("too many operations" in detail or "too large" in detail):
            return EtcdTooLarge(f"etcd: {detail}")
        return EtcdError(f"etcd refused the call ({code.name.lower()}: {detail})")

    # ------------------------------------------------------------------ reads
    def _kvs(self, kvs: Any) -> list[KV]:
        return [KV(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) for kv in kvs]

    def get(self, key: bytes) -> KV | None:
        reply = self._call(self._kv.Range, self._rpc.RangeRequest(key=key))
        found = self._kvs(reply.kvs)
        return found[0] if found else None

    def revision(self) -> int:
        """The cluster's current revision."""
        reply = self._call(self._kv.Range, self._rpc.RangeRequest(key=b"\x00", count_only=True))
        return int(reply.header.revision)

    def scan(self, start: bytes, end: bytes, revision: int = 0, limit: int = 0) -> Iterator[KV]:
        """Keys in [start, end) in key order, ``PAGE`` a call, all read at one revision (the
        first call's, or ``revision``); at most ``limit`` keys (0: all)."""
        rpc, left = self._rpc, limit
        while True:
            page = PAGE if not left else min(PAGE, left)
            try:
                reply = self._call(self._kv.Range, rpc.RangeRequest(key=start, range_end=end, limit=page,
                                                                    revision=revision))
            except EtcdCompacted as exc:
                raise EtcdCompacted(f"{exc.message} (reading at revision {revision})", revision) from None
            kvs = self._kvs(reply.kvs)
            yield from kvs
            revision = revision or int(reply.header.revision)
            if left:
                left -= len(kvs)
                if left <= 0:
                    return
            if not reply.more or not kvs:
                return
            start = kvs[-1].key + b"\x00"

    def scan_prefix(self, prefix: bytes, revision: int = 0, limit: int = 0) -> Iterator[KV]:
        return self.scan(prefix, prefix_end(prefix), revision, limit)

    # ------------------------------------------------------------------ writes
    def _compare(self, c: Compare) -> Any:
        rpc = self._rpc
        result = {"==": rpc.Compare.EQUAL, "!=": rpc.Compare.NOT_EQUAL, "<": rpc.Compare.LESS,
                  ">": rpc.Compare.GREATER}[c.op]
        if c.target == "create":
            return rpc.Compare(result=result, target=rpc.Compare.CREATE, key=c.key, create_revision=int(c.value))
        if c.target == "mod":
            return rpc.Compare(result=result, target=rpc.Compare.MOD, key=c.key, mod_revision=int(c.value))
        if c.target == "version":
            return rpc.Compare(result=result, target=rpc.Compare.VERSION, key=c.key, version=int(c.value))
        if c.target == "value":
            assert isinstance(c.value, bytes)
            return rpc.Compare(result=result, target=rpc.Compare.VALUE, key=c.key, value=c.value)
        raise ValueError(f"unknown compare target {c.target!r}")

    def _op(self, op: Op) -> Any:
        rpc = self._rpc
        if isinstance(op, Put):
            return rpc.RequestOp(request_put=rpc.PutRequest(key=op.key, value=op.value, lease=op.lease))
        if isinstance(op, Delete):
            return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=op.key, range_end=op.range_end))
        return rpc.RequestOp(request_range=rpc.RangeRequest(key=op.key))

    @staticmethod
    def txn_size(compare: Sequence[Compare], ops: Sequence[Op]) -> int:
        """About the bytes a transaction's request takes (what :data:`MAX_TXN_BYTES` bounds)."""
        size = _TXN_FRAMING
        for c in compare:
            size += len(c.key) + (len(c.value) if isinstance(c.value, bytes) else 10) + 8
        for op in ops:
            size += len(op.key) + 16 + (len(op.value) if isinstance(op, Put) else 0)
            if isinstance(op, Delete):
                size += len(op.range_end)
        return size

    def txn(self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        """One atomic transaction: ``success`` if every compare holds, else ``failure``."""
        ops = max(len(success), len(failure))
        if ops > MAX_TXN_OPS:
            raise EtcdTooLarge(f"a transaction of {ops} operations is above etcd's {MAX_TXN_OPS}")
        size = self.txn_size(compare, [*success, *failure])
        if size > MAX_TXN_BYTES:
            raise EtcdTooLarge(f"a transaction of about {size} bytes is above etcd's {MAX_TXN_BYTES}")
        rpc = self._rpc
        request = rpc.TxnRequest(compare=[self._compare(c) for c in compare],
                                 success=[self._op(op) for op in success],
                                 failure=[self._op(op) for op in failure])
        reply = self._call(self._kv.Txn, request)
        got: list[KV | None] = []
        for response in reply.responses:
            if response.WhichOneof("response") == "response_range":
                kvs = self._kvs(response.response_range.kvs)
                got.append(kvs[0] if kvs else None)
        return TxnResult(bool(reply.succeeded), int(reply.header.revision), got)

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """A plain put; returns its revision."""
        reply = self._call(self._kv.Put, self._rpc.PutRequest(key=key, value=value, lease=lease))
        return int(reply.header.revision)

    def delete_range(self, start: bytes, end: bytes = b"") -> int:
        """Delete [start, end) (``end`` b"": the one key); returns how many went."""
        reply = self._call(self._kv.DeleteRange, self._rpc.DeleteRangeRequest(key=start, range_end=end))
        return int(reply.deleted)

    def compact(self, revision: int) -> None:
        """Drop history before ``revision`` (the keys' current values stay)."""
        try:
            self._call(self._kv.Compact, self._rpc.CompactionRequest(revision=revision))
        except EtcdError as exc:
            if "compacted" not in str(exc):  # compacting to an already compacted revision is fine
                raise

    # ------------------------------------------------------------------ leases
    def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds (etcd's minimum is 2 s a lease can be kept by); its id."""
        reply = self._call(self._lease.LeaseGrant, self._rpc.LeaseGrantRequest(TTL=ttl, ID=0))
        if reply.error:
            raise EtcdError(f"etcd refused a lease: {reply.error}")
        return int(reply.ID)

    def keepalive(self, lease: int) -> int:
        """Refresh ``lease``; returns its TTL now (0 or less: the lease is gone)."""
        grpc = self._grpc
        try:
            stream = self._lease.LeaseKeepAlive(iter([self._rpc.LeaseKeepAliveRequest(ID=lease)]),
                                                timeout=self.timeout)
            for reply in stream:
                return int(reply.TTL)
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        return 0

    def revoke(self, lease: int) -> None:
        try:
            self._call(self._lease.LeaseRevoke, self._rpc.LeaseRevokeRequest(ID=lease))
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise

    # ------------------------------------------------------------------ cluster
    def status(self) -> dict[str, int]:
        """The answering member's view: its id, the leader's, raft term and index, db size."""
        reply = self._call(self._maint.Status, self._rpc.StatusRequest())
        return {"member": int(reply.header.member_id), "leader": int(reply.leader), "term": int(reply.raftTerm),
                "index": int(reply.raftIndex), "db_size": int(reply.dbSize), "revision": int(reply.header.revision)}

    # ------------------------------------------------------------------ watch
    def watch(self, prefix: bytes, start_revision: int, on_events: Callable[[list[tuple[str, KV]]], None],
              on_error: Callable[[EtcdError], None]) -> "Watch":
        """Every change under ``prefix`` from ``start_revision`` on, in revision order, as
        batches of (``put`` | ``delete``, KV) given to ``on_events`` (in the watch's thread).
        A member failing is resumed from; compaction past what is needed ends the watch with
        :class:`EtcdCompacted` to ``on_error``; :meth:`Watch.cancel` ends it."""
        w = Watch(self, prefix, start_revision, on_events, on_error)
        self._watches.append(w)
        w.start()
        return w

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in self._watches:
            w.cancel()
        self._channel.close()
        for w in self._watches:
            w.join()
        self._watches.clear()

    def __enter__(self) -> "EtcdKV":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Watch:
    """One watch stream in its own thread (see :meth:`EtcdKV.watch`)."""

    def __init__(self, kv: EtcdKV, prefix: bytes, start_revision: int,
                 on_events: Callable[[list[tuple[str, KV]]], None], on_error: Callable[[EtcdError], None]) -> None:
        self._kv, self.prefix = kv, prefix
        self.next_revision = start_revision
        self._on_events, self._on_error = on_events, on_error
        self._stop = threading.Event()
        self._requests: queue.Queue[Any] = queue.Queue()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, name="zmesh-etcd-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _request_iter(self, requests: "queue.Queue[Any]") -> Iterator[Any]:
        rpc = self._kv._rpc
        yield rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=self.prefix, range_end=prefix_end(self.prefix), start_revision=self.next_revision))
        while True:  # the stream stays open until its queue gets None (a cancel, a resume)
            if requests.get() is None:
                return

    def _run(self) -> None:
        grpc, kv_pb2 = self._kv._grpc, self._kv._kv_pb2
        delay = 0.05
        while not self._stop.is_set():
            try:
                self._stream = self._kv._watch.Watch(self._request_iter(self._requests))
                for reply in self._stream:
                    if reply.compact_revision:
                        self._on_error(EtcdCompacted(
                            f"etcd compacted revisions before {reply.compact_revision}; the watch needed "
                            f"{self.next_revision}", int(reply.compact_revision)))
                        return
                    if reply.canceled:
                        raise EtcdError(f"etcd canceled the watch: {reply.cancel_reason}")
                    if not reply.events:
                        continue
                    batch = [("put" if e.type == kv_pb2.Event.PUT else "delete",
                              KV(e.kv.key, e.kv.value, e.kv.create_revision, e.kv.mod_revision, e.kv.version,
                                 e.kv.lease)) for e in reply.events]
                    self.next_revision = batch[-1][1].mod_revision + 1
                    self._on_events(batch)
                    delay = 0.05
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                log.info("etcd watch on %r broke (%s); resuming at revision %d", self.prefix,
                         exc.code().name.lower(), self.next_revision)
            except EtcdError as exc:
                self._on_error(exc)
                return
            finally:
                self._requests.put(None)  # ends this stream's request iterator
                self._requests = queue.Queue()
            if self._stop.wait(delay):
                return
            delay = min(1.0, delay * 2)

    def cancel(self) -> None:
        self._stop.set()
        self._requests.put(None)
        stream = self._stream
        if stream is not None:
            stream.cancel()

    def join(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
