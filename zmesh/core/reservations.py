"""Path reservations: glob patterns an agent holds, shared or exclusive, on the one claim
machinery.

Rules it keeps:

* A reservation is a claim of kind ``path`` on the resource ``path:<pattern> NUL <agent>``:
  one record per (pattern, holder), so shared holders of one pattern coexist. Tokens, the
  lease it hangs on, its own TTL, expiry and recovery after a restart are claims.py's, as
  for every kind; nothing here keeps a deadline or a token of its own.
* The conflict is decided by overlap (zmesh/protocol/globs.py), never by string equality: an
  exclusive reservation conflicts with every overlapping reservation of another agent,
  and any reservation conflicts with an overlapping exclusive one of another agent. An
  agent never conflicts with itself.
* ``reserve`` is all or none: every pattern is checked before any is granted, so a refusal
  writes nothing. It names the holder, the holder's pattern and mode, and when it lapses.
* Reserving a pattern one holds in the same mode renews it (same token; a ``ttl`` restarts
  its deadline); in the other mode the old one is released and a new one granted.
* Every grant and ending is an event: ``reservation.granted``, ``reservation.released``
  (the holder let go), ``reservation.expired`` (lease or TTL lapsed, or it unregistered).
* A refused reserve with ``wait_s`` waits in one queue, first come first served: a request
  that overlaps (in a conflicting mode) one queued before it waits behind it even when the
  held reservations would let it through, so no waiter is overtaken forever. The queue is
  tried again after every batch in which a reservation ended or a waiter left; a waiter is
  answered when granted, when ``wait_s`` runs out (with the conflict as it stands), or when
  its agent's lease ends. A retry of a waiting request (same request id) keeps its place.
  The queue is volatile: after a broker restart, clients retry and queue again. Every
  answer also goes to ``answered`` (the audit trail records it under the waiter's key).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..protocol import globs
from ..protocol.states import ReservationMode
from ..errors import BadRequest, Conflict, LeaseExpired, NotFound, RemoteError
from .claims import ClaimKind, Claims
from .context import DEFERRED, Batch
from .deadlines import Due
from .eventlog import EventLog
from .schema import PATH, dumps, loads, parse_path_key, path_key

if TYPE_CHECKING:
    from .agents import Agents

Handler = Callable[[Batch, dict[str, Any]], Any]
# bound once: the conflict check compares it for every reservation held (protocol/states.py)
EXCLUSIVE = ReservationMode.EXCLUSIVE


class PathKind(ClaimKind):
    """Shared or exclusive holds on path patterns."""

    prefix = PATH

    def __init__(self, owner: "Reservations") -> None:
        self.owner = owner

    def conflict(self, b: Batch, key: bytes, agent: str, request: dict[str, Any]) -> RemoteError | None:
        pattern, mode = request["pattern"], request["mode"]
        for other_key, raw in self.records(b.txn):
            other = loads(raw)
            if other["agent"] == agent or EXCLUSIVE not in (mode, other["mode"]):
                continue
            if globs.overlaps(pattern, other["pattern"]):
                expires_in = self.owner.claims.expires_in(other_key, other["agent"], b.now)
                lapse = "with its lease" if expires_in is None else f"in {expires_in:g} s unless renewed"
                return Conflict(
                    f"'{pattern}' ({mode}) overlaps '{other['pattern']}' held {other['mode']} by "
                    f"'{other['agent']}' (token {other['token']}; it lapses {lapse})",
                    {"pattern": pattern, "holder": other["agent"], "held_pattern": other["pattern"],
                     "held_mode": other["mode"], "token": other["token"], "expires_in": expires_in})
        return None

    def ended(self, b: Batch, key: bytes, claim: dict[str, Any], reason: str) -> None:
        self.owner.ended(b, key, claim, reason)

    def show(self, key: bytes) -> str:
        return "path:" + parse_path_key(key)[0]


@dataclass(slots=True)
class Waiter:
    """A reserve waiting its turn (volatile)."""

    number: int
    agent: str
    patterns: list[str]
    mode: str
    ttl: float | None
    request_id: bytes | None
    ticket: Any
    #: the key and role of the connection it came from (security on), for the audit trail
    key: str | None = None
    role: str | None = None


class Reservations:
    """The reserve, release_paths and reservations ops, and the queue of waiting reserves."""

    def __init__(self, log: EventLog, agents: "Agents", claims: Claims) -> None:
        self.log = log
        self.agents = agents
        self.claims = claims
        self.deadlines = claims.deadlines
        self.kind = PathKind(self)
        claims.register(self.kind)
        #: waiting reserves in arrival order (dicts keep insertion order)
        self.waiting: dict[int, Waiter] = {}
        self._numbers = itertools.count(1)
        #: something ended since the queue was last tried: try it after this batch
        self.freed = False
        #: told of every answer a waiter gets (core/audit.py), after it is queued for sending
        self.answered: Callable[[Batch, Waiter, Any], None] | None = None
        agents.on_end.append(self._agent_ended)

    def handlers(self) -> dict[str, Handler]:
        return {"reserve": self.reserve, "release_paths": self.release_paths, "reservations": self.list_op}

    # ------------------------------------------------------------ ops
    def reserve(self, b: Batch, body: dict[str, Any]) -> Any:
        agent_id, mode, ttl, patterns = body["agent"], body["mode"], body["ttl"], body["paths"]
        if not patterns:
            raise BadRequest("field 'paths' must name at least one pattern", {"field": "paths"})
        if b.request_id is not None:  # a retry of a waiting request keeps its place
            for waiter in self.waiting.values():
                if waiter.request_id == b.request_id and waiter.agent == agent_id:
                    waiter.ticket = b.ticket
                    return DEFERRED
        refusal = self._refusal(b, agent_id, patterns, mode, self.waiting.values())
        if refusal is None:
            return self._grant(b, agent_id, patterns, mode, ttl)
        if not body["wait_s"] or b.ticket is None:
            raise refusal
        self.agents.ensure(b, agent_id, ttl)  # it waits on a lease, like any claim (held at least ttl)
        number = next(self._numbers)
        self.waiting[number] = Waiter(number, agent_id, patterns, mode, ttl, b.request_id, b.ticket, b.key, b.role)
        self.deadlines.set(Due.WAIT, number, body["wait_s"], b.now.mono)
        return DEFERRED

    def _refusal(self, b: Batch, agent: str, patterns: list[str], mode: str,
                 ahead: Iterable[Waiter]) -> RemoteError | None:
        """Why ``agent`` may not have ``patterns`` now: a reservation held, or one queued
        before it (None: it may). Reads only."""
        for pattern in patterns:
            refusal = self.kind.conflict(b, path_key(pattern, agent), agent, {"pattern": pattern, "mode": mode})
            if refusal is not None:
                return refusal
        for waiter in ahead:
            if waiter.agent == agent or EXCLUSIVE not in (mode, waiter.mode):
                continue
            for pattern in patterns:
                other = next((p for p in waiter.patterns if globs.overlaps(pattern, p)), None)
                if other is not None:
                    return Conflict(f"'{pattern}' ({mode}) overlaps '{other}' that '{waiter.agent}' waits for "
                                    f"({waiter.mode}), queued first", {"pattern": pattern, "waiting": waiter.agent,
                                                                       "held_pattern": other, "held_mode": waiter.mode})
        return None

    def _grant(self, b: Batch, agent_id: str, patterns: list[str], mode: str, ttl: float | None) -> dict[str, Any]:
        held = {p: self.claims.get(b.txn, path_key(p, agent_id)) for p in patterns}
        agent = self.agents.ensure(b, agent_id, ttl)  # a lease that lives as long as the reservations asked
        out = []
        for pattern in patterns:
            key, claim = path_key(pattern, agent_id), held[pattern]
            renewed = claim is not None and claim["mode"] == mode
            if renewed:
                assert claim is not None
                if ttl:
                    claim["ttl"] = ttl
                    b.txn.put(*self.kind.slot(key), dumps(claim))
                    self.claims.renew(key, ttl, b.now)
            else:
                if claim is not None:  # the other mode: let the old one go first
                    self.claims.drop(b, key, claim, "mode_changed")
                claim = self.claims.grant(b, key, agent, ttl, {"pattern": pattern, "mode": mode})
                self.log.emit(b, "reservation.granted", {"agent": agent_id, "pattern": pattern, "mode": mode,
                                                         "token": claim["token"], "ttl": ttl})
            out.append({"pattern": pattern, "mode": mode, "token": claim["token"],
                        "expires_in": self.claims.expires_in(key, agent_id, b.now), "renewed": renewed})
        return {"agent": agent_id, "lease": agent["lease"], "reservations": out}

    # ------------------------------------------------------------ the queue
    def retry(self, b: Batch) -> None:
        """After a batch in which something ended: grant every waiter that may go now, in
        arrival order; one still refused holds back the later ones that overlap it."""
        self.freed = False
        ahead: list[Waiter] = []
        for waiter in list(self.waiting.values()):
            if self._refusal(b, waiter.agent, waiter.patterns, waiter.mode, ahead) is None:
                self._leave(waiter)
                self._answer(b, waiter, self._grant(b, waiter.agent, waiter.patterns, waiter.mode, waiter.ttl))
            else:
                ahead.append(waiter)

    def gave_up(self, b: Batch, number: int) -> None:
        """Due.WAIT: the waiter's wait_s ran out; it is answered with the conflict as it
        stands (behind whom it still waits)."""
        waiter = self.waiting.get(number)
        if waiter is None:
            return
        ahead = [w for w in self.waiting.values() if w.number < number]
        refusal = self._refusal(b, waiter.agent, waiter.patterns, waiter.mode, ahead)
        self._leave(waiter)
        if refusal is None:  # freed in this very batch, before the queue was tried
            self._answer(b, waiter, self._grant(b, waiter.agent, waiter.patterns, waiter.mode, waiter.ttl))
        else:
            self._answer(b, waiter, refusal)

    def _agent_ended(self, b: Batch, agent: str) -> None:
        for waiter in [w for w in self.waiting.values() if w.agent == agent]:
            self._leave(waiter)
            self._answer(b, waiter, LeaseExpired(f"agent '{agent}''s lease ended while it waited for "
                                                 f"{', '.join(waiter.patterns)}", {"agent": agent}))

    def _answer(self, b: Batch, waiter: Waiter, answer: Any) -> None:
        b.answers.append((waiter.ticket, answer))
        if self.answered is not None:
            self.answered(b, waiter, answer)

    def _leave(self, waiter: Waiter) -> None:
        del self.waiting[waiter.number]
        self.deadlines.drop(Due.WAIT, waiter.number)
        self.freed = True  # those queued behind it may go now

    def release_paths(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        agent_id, patterns = body["agent"], body["paths"]
        if patterns:
            keys = [path_key(p, agent_id) for p in patterns]
            missing = [p for p, k in zip(patterns, keys) if self.claims.get(b.txn, k) is None]
            if missing:
                raise NotFound(f"agent '{agent_id}' holds no reservation on '{missing[0]}'",
                               {"agent": agent_id, "pattern": missing[0]})
        else:
            keys = sorted(k for k in self.claims.held.get(agent_id, ()) if k.startswith(PATH + b":"))
        released = []
        for key in keys:
            claim = self.claims.get(b.txn, key)
            if claim is not None:
                self.claims.drop(b, key, claim, "released")
                released.append(claim["pattern"])
        return {"agent": agent_id, "released": released}

    def list_op(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        agent, path = body["agent"], body["path"]
        found = []
        for key, raw in self.kind.records(b.txn):
            claim = loads(raw)
            if agent is not None and claim["agent"] != agent:
                continue
            if path is not None and not globs.overlaps(path, claim["pattern"]):
                continue
            found.append({"pattern": claim["pattern"], "agent": claim["agent"], "mode": claim["mode"],
                          "token": claim["token"], "since": claim["since"], "ttl": claim["ttl"],
                          "expires_in": self.claims.expires_in(key, claim["agent"], b.now)})
        waiting = [{"agent": w.agent, "paths": w.patterns, "mode": w.mode,
                    "gives_up_in": self.deadlines.remaining(Due.WAIT, w.number, b.now.mono)}
                   for w in self.waiting.values()
                   if (agent is None or w.agent == agent)
                   and (path is None or any(globs.overlaps(path, p) for p in w.patterns))]
        return {"reservations": found, "waiting": waiting}

    # ------------------------------------------------------------ endings
    def ended(self, b: Batch, key: bytes, claim: dict[str, Any], reason: str) -> None:
        self.freed = True
        topic = "reservation.released" if reason in ("released", "mode_changed") else "reservation.expired"
        self.log.emit(b, topic, {"agent": claim["agent"], "pattern": claim["pattern"], "token": claim["token"],
                                 "reason": reason})
