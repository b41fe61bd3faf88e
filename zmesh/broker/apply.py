"""One batch of requests applied in one write transaction: what the broker loop commits.

Rules it keeps:

* Every request of a batch is applied in arrival order inside ONE write transaction; the
  replies, events and pushes it produced leave only after the commit (the caller sends them).
* A write that is a retry (same request id, same request) is answered from the retry cache,
  never applied twice; another request reusing an id is not served a stale reply.
* A refused request is answered with its error and changes nothing; a refusal for who the
  caller is (its key or role) is logged with the key's fingerprint, rate-limited.
* A request that crashes the core (a bug) raises :class:`Poison` with its index: the caller
  rolls the batch back and applies it again with that request answered ``internal``.
* Ops the broker answers itself (``answer``: hello) or adds to (``extend``: status,
  msgstats, backup) are named in the tables the broker passes in: the core never knows the
  process. An extension may answer later (DEFERRED): the broker then owes that reply.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import zmq

from .. import protocol
from ..util.logs import RateLimited
from .log import audited
from ..core import DEFERRED, Batch, Core, Now, Push
from ..errors import Internal, RemoteError, StoreError
from ..transport.keys import fingerprint as key_fingerprint
from .metrics import EMPTY, OK, RETRY
from ..protocol import Event
from .retries import RetryCache
from ..store import Store

log = logging.getLogger("zmesh.broker")
_limited = RateLimited(log, interval=10.0)

Reply = tuple[zmq.Socket, list[bytes]]


class Item:
    """A decoded request and where to answer it (a plain slotted class: one is made per
    request, and a frozen dataclass costs a setattr call per field)."""

    __slots__ = ("router", "ident", "body", "req", "lane", "at", "key", "role", "outcome")

    def __init__(self, router: zmq.Socket, ident: bytes, body: bytes, req: protocol.Request, lane: int,
                 at: float, key: str | None = None, role: str | None = None) -> None:
        self.router = router
        self.ident = ident
        self.body = body  # the request's body frame as it came (for the retry fingerprint)
        self.req = req
        self.lane = lane
        self.key = key  # the connection's authenticated key (ZAP User-Id) when secure
        self.role = role  # and the role the allow-list gave that key
        self.at = at  # the clock of the pass that read it (its latency starts there)
        self.outcome: str | None = OK  # set by apply: ok, empty, retry, an error code; None: it waits


def _a(word: str | None) -> str:
    """``a agent`` -> ``an agent``: the article a log line puts before a role."""
    word = word or "unknown"
    return ("an " if word[:1] in "aeiou" else "a ") + word


class Poison(Exception):
    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


class Applier:
    """Applies batches for one broker: owns the retry cache."""

    def __init__(self, core: Core, store: Store,
                 answer: dict[str, Callable[[Batch, dict[str, Any]], dict[str, Any]]],
                 extend: dict[str, Callable[[Batch, Any, "Item"], Any]]) -> None:
        self.core = core
        self.store = store
        self.answer = answer  # op -> the broker's whole answer (the core is not asked)
        # op -> (batch, the core's answer, the ticket) -> the answer with the broker's part, or
        # DEFERRED when the broker answers later itself (a backup: broker_jobs.py)
        self.extend = extend
        # req_id -> (fingerprint of op + body, reply frames): a retry is the same req_id
        # with the same request; another request reusing an id is not served a stale reply
        self.dedup = RetryCache()

    def apply(self, items: list[Item], poisoned: set[int], now: Now
              ) -> tuple[list[Reply], list[Event], list[Event], list[Push], list[tuple[Item, str]]]:
        """Apply requests in one write transaction; returns replies, events and pushes to
        send after the commit (the ``with`` block commits and syncs once), the events of
        lease and claim expiry (for the log), and the requests that waited answered now
        (with their outcome, for the metrics). Each item's ``outcome`` is set (None: it waits)."""
        replies: list[Reply] = []
        answered: list[tuple[Item, str]] = []
        remember: dict[bytes, tuple[int, list[bytes]]] = {}
        dedup, answer, extend = self.dedup, self.answer, self.extend
        with self.store.write() as txn:
            ctx = self.core.batch(txn, now)
            for index, item in enumerate(items):
                req, ident = item.req, item.ident
                if index in poisoned:
                    err = Internal(f"the broker failed on op '{req.op}'; see the broker log")
                    item.outcome = err.code
                    replies.append((item.router, [ident, *protocol.encode_error(req.req_id, err)]))
                    continue
                write = req.op in protocol.WRITE_OPS
                fingerprint = 0
                if write:  # a retry (same req_id, same request) is answered from memory
                    fingerprint = hash((req.op, item.body))
                    cached = dedup.get(req.req_id) or remember.get(req.req_id)
                    if cached is not None and cached[0] == fingerprint:
                        item.outcome = RETRY
                        replies.append((item.router, [ident, *cached[1]]))
                        continue
                ctx.caller, ctx.key, ctx.role = ident, item.key, item.role
                ctx.request_id, ctx.ticket = req.req_id, item  # where a deferred answer goes
                try:
                    if req.op in answer:
                        body = answer[req.op](ctx, req.body)
                    else:
                        body, _ = self.core.handle(ctx, req.op, req.body)
                        if req.op in extend and body is not DEFERRED:
                            body = extend[req.op](ctx, body, item)
                        if body is DEFERRED:  # it waits (a reserve with wait_s, a backup): answered later
                            item.outcome = None
                            continue
                    out = protocol.encode_reply(req.req_id, body)
                    item.outcome = OK if body is not None else EMPTY
                except RemoteError as exc:
                    out = protocol.encode_error(req.req_id, exc)
                    item.outcome = exc.code
                    if item.key is not None and audited(exc):  # an operator reads refusals in the log
                        fp = key_fingerprint(item.key.encode())
                        _limited.warning("refused:" + item.key, "refused op %s for %s key %s: %s", req.op,
                                         _a(item.role), fp, exc, extra={"event": "auth.refused", "op": req.op,
                                                                    "role": item.role, "key": fp, "code": exc.code})
                except StoreError:
                    raise  # the store's trouble, not this request's: StoreFull re-applies
                except Exception as exc:
                    log.exception("op %s failed (request answered 'internal')", req.op)
                    raise Poison(index) from exc
                if write:
                    remember[req.req_id] = (fingerprint, out)
                replies.append((item.router, [ident, *out]))
            ctx.caller = ctx.request_id = ctx.ticket = ctx.key = ctx.role = None
            # after the requests: heartbeats that queued while the broker was busy or
            # stalled count before any lease is judged lapsed
            expired = self.core.expire(ctx)
            for waited, reply in ctx.answers:  # requests that waited (writes: remembered for retries)
                req_id = waited.req.req_id
                out = (protocol.encode_error(req_id, reply) if isinstance(reply, RemoteError)
                       else protocol.encode_reply(req_id, reply))
                remember[req_id] = (hash((waited.req.op, waited.body)), out)
                replies.append((waited.router, [waited.ident, *out]))
                answered.append((waited, reply.code if isinstance(reply, RemoteError) else OK))
            events, pushes = ctx.events, ctx.pushes
        dedup.add(remember)
        return replies, events, expired, pushes, answered
