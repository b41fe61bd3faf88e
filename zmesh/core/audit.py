"""The audit trail: the operations the broker handled (who, what, when, result, event seq,
key), recorded durably, and the ``audit`` query that reads them.

Rules it keeps:

* What is recorded is the ``audit`` setting's (``Settings.audit``, read at each use):

  - ``writes``: every op that may change durable state (``protocol.WRITE_OPS``: heartbeat
    and renew are not among them, they only move volatile deadlines), every admin op
    (``backup`` writes no record of the store, yet an operator's action is recorded), and
    every refused request of any op;
  - ``all``: every request the core handles, reads and heartbeats included (a read then
    costs a commit);
  - ``off``: nothing (the records already kept stay, within the bound).

  ``hello`` (answered by the broker itself) and requests refused before they reach the
  core (malformed frames, an unknown op, a field that breaks its rule: the broker logs
  those, rate-limited) are never records.
* A record is written by :meth:`Core.handle` in the batch's transaction, after the
  handler: durable with the change it records, rolled back with it. A refused request
  writes its record and nothing else (result: its error code).
* Ids come from the counter ``audit`` (eventlog's counters: stored at commit, none by a
  rolled-back batch), so the kept records are gap-free from the oldest to the newest.
  Records are keyed newest first, right after the counters (core/schema.py ``NESTED``):
  appending one dirties no page the write's event and counters did not.
* Retention: an append beyond ``audit_retention`` deletes exactly the record that fell out
  (id - retention), never a scan; :meth:`Audit.trim` cuts the trail to the bound at start,
  after the bound was lowered. A bound lowered while the broker runs takes full effect at
  the next start (until then the records past it are hidden from the query, not deleted).
* Cheap on the hot path: one orjson dumps, one put and at most one delete per record, no
  read beyond the counters (a key's fingerprint is computed once and cached).
* A reserve that waits (``wait_s``) is recorded twice: ``waiting`` when it queues, and its
  answer (``ok`` or the refusal) when it comes, under the key and role it was sent with.
* The query reads newest first, stops at the first record older than ``since``, and
  examines at most ``scan_limit`` records per request (ops_audit.AUDIT_SCAN_LIMIT): its
  ``next`` says where the following request goes on.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import islice
from typing import TYPE_CHECKING, Any, Callable

from ..errors import RemoteError
from ..protocol.identity import fingerprint
from ..protocol.ops.audit import AUDIT, AUDIT_SCAN_LIMIT
from ..protocol import WRITE_OPS
from .context import Batch, Settings
from .eventlog import bump, counter
from ..protocol.identity import ACTORS, ADMIN_OPS
from .schema import AUDIT_COUNTER, audit_key, dumps, loads

if TYPE_CHECKING:
    from .reservations import Waiter

Handler = Callable[[Batch, dict[str, Any]], Any]

#: op -> the field naming the task the op is about, where it is not ``task``
TASK_FIELDS = {"task_create": "id"}
#: ops whose task is the one their reply names (claim_next names none: it takes one)
TASK_IN_REPLY = frozenset({"claim_next"})
#: the query's filters: record fields that must equal the request's value when it gives one
FILTERS = ("op", "agent", "task", "result")
#: audit ids deleted per pass when the trail is cut at start (bounds the memory of a big cut)
TRIM_CHUNK = 10_000


@lru_cache(maxsize=1024)
def key_fingerprint(key: str) -> str:
    """The fingerprint a record shows for an authenticated key (as audit events show it)."""
    return fingerprint(key.encode())


class Audit:
    """Appends, trims and queries the trail."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings  # read at each use
        #: records one query examines at most (a test may lower it)
        self.scan_limit = AUDIT_SCAN_LIMIT

    def handlers(self) -> dict[str, Handler]:
        return {AUDIT: self.query}

    # ------------------------------------------------------------ recording
    def done(self, b: Batch, op: str, body: dict[str, Any], reply: Any, waiting: bool) -> None:
        """A request the core answered (``waiting``: a reserve queued, answered later)."""
        mode = self.settings.audit
        if mode == "all" or (mode == "writes" and (op in WRITE_OPS or op in ADMIN_OPS)):
            task = body.get(TASK_FIELDS.get(op, "task"))
            if op in TASK_IN_REPLY and reply is not None:
                task = reply["task"]
            self.append(b, op, body.get(ACTORS.get(op, "agent")), task, "waiting" if waiting else "ok",
                        b.key, b.role)

    def refused(self, b: Batch, op: str, body: dict[str, Any], code: str) -> None:
        """A request the core refused with ``code``: recorded unless the trail is off."""
        if self.settings.audit != "off":
            self.append(b, op, body.get(ACTORS.get(op, "agent")), body.get(TASK_FIELDS.get(op, "task")), code,
                        b.key, b.role)

    def answered(self, b: Batch, waiter: Waiter, answer: Any) -> None:
        """A waiting reserve got its answer (a reply body or a RemoteError)."""
        if self.settings.audit != "off":
            self.append(b, "reserve", waiter.agent, None, answer.code if isinstance(answer, RemoteError) else "ok",
                        waiter.key, waiter.role)

    def append(self, b: Batch, op: str, agent: str | None, task: str | None, result: str,
               key: str | None, role: str | None) -> None:
        number = bump(b, AUDIT_COUNTER)
        b.txn.put("audit", audit_key(number), dumps({
            "id": number, "ts": b.now.wall, "op": op, "agent": agent, "task": task, "result": result,
            "seq": counter(b, b"seq"), "key": None if key is None else key_fingerprint(key), "role": role}))
        floor = number - self.settings.audit_retention
        if floor > 0:
            b.txn.delete("audit", audit_key(floor))

    def trim(self, b: Batch) -> int:
        """Delete every record at or below the bound's floor (after a start with a smaller
        audit_retention the trail may hold more than append's one-record trim removes);
        returns how many."""
        # keys count down (schema.audit_key): the records at or below the floor are the last
        floor = audit_key(max(0, counter(b, AUDIT_COUNTER) - self.settings.audit_retention))
        trimmed = 0
        while True:
            doomed = [bytes(key) for key, _ in islice(b.txn.scan("audit", start=floor), TRIM_CHUNK)]
            for key in doomed:
                b.txn.delete("audit", key)
            trimmed += len(doomed)
            if len(doomed) < TRIM_CHUNK:
                return trimmed

    # ------------------------------------------------------------ the query
    def query(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        newest = counter(b, AUDIT_COUNTER)
        number = newest if body["before"] is None else min(body["before"] - 1, newest)
        since, limit, scan_limit = body["since"], body["limit"], self.scan_limit
        wanted = [(name, body[name]) for name in FILTERS if body[name] is not None]
        get = b.txn.get
        records: list[dict[str, Any]] = []
        examined = 0
        while number > 0:
            raw = get("audit", audit_key(number))
            if raw is None:  # below the oldest record kept
                break
            record = loads(raw)
            if since is not None and record["ts"] < since:
                break
            if len(records) == limit or examined == scan_limit:  # more may be left: go on below here
                return {"records": records, "next": number + 1}
            examined += 1
            for name, value in wanted:
                if record[name] != value:
                    break
            else:
                records.append(record)
            number -= 1
        return {"records": records, "next": None}
