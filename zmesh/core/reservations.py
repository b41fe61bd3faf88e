"""Path reservations: glob patterns an agent holds, shared or exclusive, on the one claim
machinery.

Rules it keeps:

* A reservation is a claim of kind ``path`` on the resource ``path:<pattern> NUL <agent>``:
  one record per (pattern, holder), so shared holders of one pattern coexist. Tokens, the
  lease it hangs on, its own TTL, expiry and recovery after a restart are claims.py's, as
  for every kind; nothing here keeps a deadline or a token of its own.
* The conflict is decided by overlap (zmesh/globs.py), never by string equality: an
  exclusive reservation conflicts with every overlapping reservation of another agent,
  and any reservation conflicts with an overlapping exclusive one of another agent. An
  agent never conflicts with itself.
* ``reserve`` is all or none: every pattern is checked before any is granted, so a refusal
  writes nothing. It names the holder, the holder's pattern and mode, and when it lapses.
* Reserving a pattern one holds in the same mode renews it (same token; a ``ttl`` restarts
  its deadline); in the other mode the old one is released and a new one granted.
* Every grant and ending is an event: ``reservation.granted``, ``reservation.released``
  (the holder let go), ``reservation.expired`` (lease or TTL lapsed, or it unregistered).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from .. import globs
from ..errors import BadRequest, Conflict, NotFound, RemoteError
from .claims import ClaimKind, Claims
from .context import Batch
from .eventlog import EventLog
from .schema import PATH, dumps, loads, parse_path_key, path_key

if TYPE_CHECKING:
    from .agents import Agents

Handler = Callable[[Batch, dict[str, Any]], Any]

class PathKind(ClaimKind):
    """Shared or exclusive holds on path patterns."""

    prefix = PATH

    def __init__(self, owner: "Reservations") -> None:
        self.owner = owner

    def conflict(self, b: Batch, key: bytes, agent: str, request: dict[str, Any]) -> RemoteError | None:
        pattern, mode = request["pattern"], request["mode"]
        for other_key, raw in self.records(b.txn):
            other = loads(raw)
            if other["agent"] == agent or "exclusive" not in (mode, other["mode"]):
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


class Reservations:
    """The reserve, release_paths and reservations ops."""

    def __init__(self, log: EventLog, agents: "Agents", claims: Claims) -> None:
        self.log = log
        self.agents = agents
        self.claims = claims
        self.kind = PathKind(self)
        claims.register(self.kind)

    def handlers(self) -> dict[str, Handler]:
        return {"reserve": self.reserve, "release_paths": self.release_paths, "reservations": self.list_op}

    # ------------------------------------------------------------ ops
    def reserve(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        agent_id, mode, ttl, patterns = body["agent"], body["mode"], body["ttl"], body["paths"]
        if not patterns:
            raise BadRequest("field 'paths' must name at least one pattern", {"field": "paths"})
        held = {p: self.claims.get(b.txn, path_key(p, agent_id)) for p in patterns}
        for pattern in patterns:  # all or none: every refusal before any write
            refusal = self.kind.conflict(b, path_key(pattern, agent_id), agent_id,
                                         {"pattern": pattern, "mode": mode})
            if refusal is not None:
                raise refusal
        agent = self.agents.ensure(b, agent_id, None)
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
        return {"reservations": found}

    # ------------------------------------------------------------ endings
    def ended(self, b: Batch, key: bytes, claim: dict[str, Any], reason: str) -> None:
        topic = "reservation.released" if reason in ("released", "mode_changed") else "reservation.expired"
        self.log.emit(b, topic, {"agent": claim["agent"], "pattern": claim["pattern"], "token": claim["token"],
                                 "reason": reason})
