"""The audit query op of the wire protocol (protocol.OPS includes it) and the trail's limits.

Rules it keeps:

* The op only reads. With security on it is an operator op (``Op.operator``): observer and
  admin keys run it, an agent key is refused ``forbidden`` (core/identity.py); with
  security off every client may, as with every other op.
* One request examines at most :data:`AUDIT_SCAN_LIMIT` records, whatever its filters, so a
  query for something rare never holds the broker for long: the answer's ``next`` says
  where the following request goes on. A client pages through ``next`` (Client.audit).
* Its ``op`` filter accepts exactly the protocol's op names and ``result`` exactly ``ok``,
  ``waiting`` and the wire error codes: both are checked like every field, before a round
  trip, with the refusal naming the field. The op is made by :func:`audit_op` from the op
  table, so the names are never written twice.
* What is recorded, and when, is core/audit.py's business (docs/AUDIT.md).
"""

from __future__ import annotations

from ...errors import WIRE_ERRORS
from ..fields import MAX_INT, MAX_LIST_LIMIT, Field, Op

AUDIT = "audit"
#: a record's ``result``: ok, waiting (a reserve queued for its paths; its answer is a record
#: of its own) or the error code the request was refused with
RESULTS: tuple[str, ...] = ("ok", "waiting", *WIRE_ERRORS)
#: records one audit request examines at most (about 20 ms of broker time, measured with LMDB on a
#: busy 2-core machine)
AUDIT_SCAN_LIMIT = 10_000
DEFAULT_AUDIT_LIMIT = 100


def audit_op(op_names: tuple[str, ...]) -> Op:
    """The ``audit`` op; ``op_names``: every op of the protocol, which its ``op`` filter takes."""
    return Op(
        AUDIT,
        "Query the audit trail: the operations the broker recorded (who, what, when, result, event seq, "
        "key), newest first. Filters combine (all must match). The scan stops at the first record older "
        f"than `since`, and examines at most {AUDIT_SCAN_LIMIT} records per request: `next` is then the "
        "`before` of the following request (null: nothing older is left to examine). A page may hold fewer "
        "than `limit` records while `next` is not null.",
        (
            Field("agent", "id", doc="only records of this agent (the one that acted)"),
            Field("task", "id", doc="only records naming this task"),
            Field("op", "choice", doc="only records of this op (any op name)", choices=op_names),
            Field("result", "choice", doc="only records with this result: ok, waiting (a reserve queued) "
                  "or an error code", choices=RESULTS),
            Field("since", "number", doc="wall-clock time (Unix seconds): stop at the first record older than "
                  "this", lo=0, hi=MAX_INT),
            Field("before", "int", doc="only records with a smaller audit id (the `next` of the previous page)",
                  lo=1, hi=MAX_INT),
            Field("limit", "int", default=DEFAULT_AUDIT_LIMIT, lo=1, hi=MAX_LIST_LIMIT, doc="at most this many "
                  "records"),
        ),
        returns="{records: [{id, ts, op, agent, task, result, seq, key, role}], next}",
        errors=("forbidden",),
        operator=True,
    )
