"""The path reservation ops of the wire protocol (protocol.OPS includes them) and their topics.

Rules it keeps:

* What travels is stated once, here: the broker validates requests with these fields, the
  clients check arguments with them, the CLI builds its options from them and
  docs/PROTOCOL.md is generated from them.
* A pattern is checked and put in canonical form where it enters (field kind ``glob``,
  zmesh/protocol/globs.py), so the core only ever sees canonical patterns.
"""

from __future__ import annotations

from ..fields import MAX_TTL_S, MAX_WAIT_S, MIN_TTL_S, Field, Op
from ..states import ReservationMode, values

#: how a reservation is held
MODES = values(ReservationMode)

_AGENT = Field("agent", "id", True, doc="agent id (its lease holds the reservations)")
_RESERVATION = "{pattern, agent, mode, token, since, ttl, expires_in}"

RESERVATION_OPS: tuple[Op, ...] = (
    Op(
        "reserve",
        "Reserve path patterns (globs) for an agent, all or none. An `exclusive` reservation "
        "conflicts with every overlapping reservation of another agent (overlap means some path "
        "matches both patterns, not equal strings); `shared` ones coexist with each other. Each "
        "grant is a claim on the agent's lease (it goes when the lease lapses) with a fencing "
        "token and, with `ttl`, a deadline of its own. Reserving a pattern again renews it (same "
        "token; a new `ttl` restarts its deadline) or, in the other mode, grants it anew. "
        "Refused with conflict naming the holder, its pattern, mode and expiry; with `wait_s` the "
        "request waits instead, first come first served (a later request that overlaps an "
        "earlier waiting one queues behind it), and is answered when granted or, after `wait_s`, "
        "with the conflict as it stands then.",
        (
            _AGENT,
            Field("paths", "globlist", True, doc="patterns to reserve (at least one)"),
            Field("mode", "choice", default="exclusive", doc="exclusive or shared", choices=MODES),
            Field("ttl", "ttl", doc="seconds the reservations last unless renewed (default: as long as "
                  "the lease)", lo=MIN_TTL_S, hi=MAX_TTL_S),
            Field("wait_s", "number", default=0.0, doc="seconds to wait in the queue when refused "
                  "(0: refuse at once)", lo=0.0, hi=MAX_WAIT_S),
        ),
        writes=True,
        returns="{agent, lease, reservations: [{pattern, mode, token, expires_in, renewed}]}",
        errors=("conflict", "bad_request"),
    ),
    Op(
        "release_paths",
        "Release an agent's reservations: the patterns named (each must be held by it), or with "
        "no `paths` every one it holds.",
        (
            _AGENT,
            Field("paths", "globlist", default=[], doc="patterns to release; empty: all of the agent's"),
        ),
        writes=True,
        returns="{agent, released: [pattern]}",
        errors=("not_found",),
    ),
    Op(
        "reservations",
        "Reservations held now, by pattern then agent, and the reserves waiting in the queue, "
        "first come first: all, one agent's, or those overlapping a path or pattern.",
        (
            Field("agent", "id", doc="only this agent's"),
            Field("path", "glob", doc="only those overlapping this path or pattern"),
        ),
        returns="{reservations: [" + _RESERVATION + "], waiting: [{agent, paths, mode, gives_up_in}]}",
    ),
)

RESERVATION_TOPICS: dict[str, str] = {
    "reservation.granted": "an agent reserved a pattern (agent, pattern, mode, token, ttl)",
    "reservation.released": "an agent released a pattern, or changed its mode (agent, pattern, token, reason)",
    "reservation.expired": "a reservation lapsed with its agent's lease or its own TTL, or the agent "
                           "unregistered (agent, pattern, token, reason)",
}
