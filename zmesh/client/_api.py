"""Every op of the public client API, defined once for both drivers, and the lease state.

Rules: a method turns its Python arguments into a request body and nothing more: the
body is checked by the broker's own validation before it is sent (see
``ClientCore.exchange``), so a bad value is a ``BadRequest``/``TooLarge`` naming the field,
never a TypeError/ValueError from inside. Python-only mistakes JSON would hide are caught
here: a bare string where a list of names is due (``requires="python"`` would otherwise
become six capabilities), a non-iterable, an empty agent name that would silently fall
back to the client's. ``_call`` is the driver's: it returns the result (Client) or an
awaitable of it (AsyncClient).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from .. import protocol
from ..errors import BadRequest, Conflict, InvalidArgument, RemoteError
from ._admin_api import AdminApi
from ._messages_api import MessagesApi
from ._protocol import Call, _identity, _to_claim

#: ops a client sends before (or instead of) registering its agent: they never trigger the
#: implicit connect that registers it
NO_CONNECT_OPS = frozenset({"hello", "register", "unregister", "heartbeat"})
#: bounds on a client's per-call timeout (seconds)
MIN_TIMEOUT_S = 0.01
MAX_TIMEOUT_S = 3600.0


def names(field: str, value: Any) -> list[str] | None:
    """A list of names from any iterable of strings; None stays None; a str is refused."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise BadRequest(f"field '{field}' must be a list of strings, not a single string "
                         f"(did you mean [{value!r}]?)", {"field": field})
    try:
        return list(value)
    except TypeError:
        raise BadRequest(f"field '{field}' must be a list of strings, not {type(value).__name__}",
                         {"field": field}) from None


def check_field(op: str, field: str, value: Any) -> Any:
    """One argument checked as the op's wire field (for constructor arguments)."""
    return protocol.check_value(protocol.OPS[op].by_name[field], value)


def check_timeout(field: str, value: Any, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not MIN_TIMEOUT_S <= value <= MAX_TIMEOUT_S:
        raise InvalidArgument(f"{field} must be a number of seconds in {MIN_TIMEOUT_S:g}..{MAX_TIMEOUT_S:g}, "
                              f"got {value!r}", {"field": field})
    return float(value)


def check_bool(field: str, value: Any) -> bool:
    """A flag must be True or False: bool("no") and bool(nan) are True, never a silent yes."""
    if not isinstance(value, bool):
        raise InvalidArgument(f"{field} must be True or False, got {value!r}", {"field": field})
    return value


class Api(MessagesApi, AdminApi):
    """Every op, defined once (the message ops in MessagesApi, the admin ops in AdminApi)."""

    agent: str | None

    def _call(self, call: Call[Any]) -> Any:  # pragma: no cover - drivers override
        raise NotImplementedError

    def _agent(self, agent: str | None) -> str:
        name = self.agent if agent is None else agent
        if name is None:
            raise BadRequest("this call needs an agent: pass agent=... here or to the client",
                             {"field": "agent"})
        return name

    def hello(self) -> Any:
        return self._call(Call("hello", {}, _identity))

    def register(self, agent: str | None = None, *, capabilities: Iterable[str] = (),
                 metadata: dict[str, Any] | None = None, ttl: float | None = None) -> Any:
        return self._call(Call("register", {
            "agent": self._agent(agent), "capabilities": names("capabilities", capabilities),
            "metadata": {} if metadata is None else metadata, "ttl": ttl}, _identity))

    def heartbeat(self, agent: str | None = None, *, lease: int | None = None) -> Any:
        return self._call(Call("heartbeat", {"agent": self._agent(agent), "lease": lease}, _identity))

    def unregister(self, agent: str | None = None) -> Any:
        return self._call(Call("unregister", {"agent": self._agent(agent)}, _identity))

    def create_task(self, task_id: str, *, type: str = "task", data: Any = None, priority: int = 0,
                    requires: Iterable[str] = (), max_attempts: int = 3,
                    depends_on: Iterable[str] = ()) -> Any:
        """Create a task; returns its record. Raises Conflict if the id exists."""
        return self._call(Call("task_create", {
            "id": task_id, "type": type, "data": data, "priority": priority,
            "requires": names("requires", requires), "max_attempts": max_attempts,
            "depends_on": names("depends_on", depends_on)}, _identity))

    def claim(self, task_id: str, *, agent: str | None = None, ttl: float | None = None) -> Any:
        """Claim -> Claim, or None when another agent holds the task (lost the race).
        Raises NotFound for an unknown task and Conflict when it is not claimable."""
        return self._call(Call("claim", {"task": task_id, "agent": self._agent(agent), "ttl": ttl},
                               _to_claim, _none_if_lost))

    def try_claim(self, task_id: str, *, agent: str | None = None, ttl: float | None = None) -> Any:
        """Like claim, but a lost race raises Conflict (with the holder) instead of None."""
        return self._call(Call("claim", {"task": task_id, "agent": self._agent(agent), "ttl": ttl},
                               _to_claim))

    def claim_next(self, *, agent: str | None = None, capabilities: Iterable[str] | None = None,
                   ttl: float | None = None) -> Any:
        """The best available task this agent can do -> Claim (with .task), or None."""
        return self._call(Call("claim_next", {
            "agent": self._agent(agent), "ttl": ttl,
            "capabilities": names("capabilities", capabilities)}, _to_claim))

    def next_task(self, *, agent: str | None = None, capabilities: Iterable[str] | None = None) -> Any:
        """The task claim_next would take now, without claiming it (a task record), or None.
        ``capabilities`` default to the agent's registered ones (the client's agent unless
        named; none for a client without one)."""
        return self._call(Call("task_next", {"agent": self.agent if agent is None else agent,
                                             "capabilities": names("capabilities", capabilities)}, _identity))

    def complete(self, task_id: str, *, token: int | None = None, result: Any = None,
                 agent: str | None = None) -> Any:
        return self._call(Call("complete", {"task": task_id, "agent": self._agent(agent),
                                            "token": token, "result": result}, _identity))

    def fail(self, task_id: str, *, error: str, token: int | None = None,
             agent: str | None = None) -> Any:
        return self._call(Call("fail", {"task": task_id, "agent": self._agent(agent),
                                        "token": token, "error": error}, _identity))

    def release(self, task_id: str, *, token: int | None = None, agent: str | None = None) -> Any:
        return self._call(Call("release", {"task": task_id, "agent": self._agent(agent),
                                           "token": token}, _identity))

    def renew(self, task_id: str, *, token: int | None = None, ttl: float | None = None,
              agent: str | None = None) -> Any:
        """Extend a claim during long work -> Claim. Raises LeaseExpired/ClaimExpired if it
        lapsed, StaleToken/NotOwner if another claim replaced it."""
        return self._call(Call("renew", {"task": task_id, "agent": self._agent(agent),
                                         "token": token, "ttl": ttl}, _to_claim))

    progress = renew

    def publish(self, topic: str, data: Any = None, *, agent: str | None = None) -> Any:
        """Broadcast ``data`` to every subscriber as the event ``msg.<topic>``; returns
        its seq. The message is in the event log, so subscribers that were away replay it."""
        return self._call(Call("publish", {"topic": topic, "data": data,
                                           "agent": self.agent if agent is None else agent}, _seq_of))

    def task(self, task_id: str) -> Any:
        return self._call(Call("task_get", {"task": task_id}, _identity))

    def tasks(self, *, status: str | None = None, after: str = "", limit: int = 1000) -> Any:
        """One page of tasks (a list). See task_page for whether more follow."""
        return self._call(Call("task_list", {"status": status, "after": after, "limit": limit},
                               lambda body: body["tasks"]))

    def task_page(self, *, status: str | None = None, after: str = "", limit: int = 1000) -> Any:
        """One page: ``{"tasks": [...], "more": bool, "seq": int}``; pass the last id as
        ``after`` for the next page."""
        return self._call(Call("task_list", {"status": status, "after": after, "limit": limit},
                               _identity))

    def agents(self) -> Any:
        """Every agent: presence, liveness, lease, stats and claims held (a list)."""
        return self._call(Call("agent_list", {}, lambda body: body["agents"]))

    def agent_list(self) -> Any:
        """``{agents, idle_queue, seq}``: every agent and the idle queue in arrival order."""
        return self._call(Call("agent_list", {}, _identity))

    def snapshot(self) -> Any:
        """Agents, idle queue, open blockers and task counts at one ``seq`` (see Roster)."""
        return self._call(Call("snapshot", {}, _identity))

    # ---------------------------------------------------------------- presence
    def report(self, state: str, *, task: str | None = None, reason: str | None = None,
               message: str | None = None, cost: float | None = None,
               requires: Iterable[str] = (), threshold: float = 0.5, agent: str | None = None) -> Any:
        """Report presence (idle, busy, blocked, completed, help) -> ``{agent, state,
        position, helpers, seq}``. idle/completed are refused (Conflict) while the agent
        holds a task claim."""
        return self._call(Call("report", {
            "agent": self._agent(agent), "state": state, "task": task, "reason": reason,
            "message": message, "cost": cost, "requires": names("requires", requires),
            "threshold": threshold}, _identity))

    def idle(self, *, message: str | None = None, cost: float | None = None,
             agent: str | None = None) -> Any:
        """Report idle -> the agent's place in the idle queue (1: waiting longest)."""
        return self._call(Call("report", {"agent": self._agent(agent), "state": "idle",
                                          "message": message, "cost": cost}, _position))

    def busy(self, task: str, *, message: str | None = None, cost: float | None = None,
             agent: str | None = None) -> Any:
        return self.report("busy", task=task, message=message, cost=cost, agent=agent)

    def blocked(self, reason: str, *, task: str | None = None, message: str | None = None,
                cost: float | None = None, agent: str | None = None) -> Any:
        return self.report("blocked", reason=reason, task=task, message=message, cost=cost, agent=agent)

    def completed(self, task: str, *, message: str | None = None, cost: float | None = None,
                  agent: str | None = None) -> Any:
        """Report a task done (counted once per task; the agent is idle again)."""
        return self.report("completed", task=task, message=message, cost=cost, agent=agent)

    def help(self, reason: str, *, requires: Iterable[str] = (), threshold: float = 0.5,
             task: str | None = None, message: str | None = None, agent: str | None = None) -> Any:
        """Ask for help -> the helpers found (idle, alive agents covering ``requires``)."""
        return self._call(Call("report", {
            "agent": self._agent(agent), "state": "help", "reason": reason, "task": task,
            "message": message, "requires": names("requires", requires), "threshold": threshold},
            lambda body: body["helpers"]))

    def find_helpers(self, required_capabilities: Iterable[str], threshold: float = 0.5, *,
                     limit: int = 100) -> Any:
        """Idle, alive agents covering at least ``threshold`` of the capabilities: best
        cover first, then longest waiting (a list of ``{agent, cover, matched, missing,
        position, waiting_since, capabilities}``)."""
        return self._call(Call("helpers", {
            "requires": names("required_capabilities", required_capabilities),
            "threshold": threshold, "limit": limit}, lambda body: body["helpers"]))

    def agent_info(self, agent: str | None = None) -> Any:
        """One agent's presence, liveness and stats (tasks done and failed, cost, uptime,
        claims held)."""
        return self._call(Call("agent_get", {"agent": self._agent(agent)}, _identity))

    stats = agent_info

    def report_blocker(self, type: str, description: str, severity: str = "medium",
                       required_capabilities: Iterable[str] = (), task: str | None = None, *,
                       threshold: float = 0.5, agent: str | None = None) -> Any:
        """Raise a blocker: the agent becomes blocked, ``blocker.raised`` is published ->
        ``{blocker, helpers, seq}``."""
        return self._call(Call("blocker_raise", {
            "agent": self._agent(agent), "type": type, "description": description,
            "severity": severity, "requires": names("required_capabilities", required_capabilities),
            "task": task, "threshold": threshold}, _identity))

    def resolve_blocker(self, blocker: str, *, resolution: str | None = None,
                        agent: str | None = None) -> Any:
        """Resolve an open blocker -> the blocker record."""
        return self._call(Call("blocker_resolve", {"blocker": blocker, "agent": self.agent if agent is None else agent,
                                                   "resolution": resolution}, _identity))

    def blocker_page(self, *, status: str = "open", after: str = "", limit: int = 1000) -> Any:
        """One page: ``{"blockers": [...], "more": bool, "seq": int}``."""
        return self._call(Call("blocker_list", {"status": status, "after": after, "limit": limit},
                               _identity))

    def blockers(self, *, status: str = "open", after: str = "", limit: int = 1000) -> Any:
        """Blockers, oldest first (a list): open ones by default."""
        return self._call(Call("blocker_list", {"status": status, "after": after, "limit": limit},
                               lambda body: body["blockers"]))

    def status(self) -> Any:
        return self._call(Call("status", {}, _identity))

    def health(self) -> Any:
        """The broker's health: ``{healthy, reasons, broker_id, version, uptime, seq,
        store_bytes, used_bytes, map_size, map_use, commit_p95_ms, ...}`` (``reasons``: one
        line per check that failed; empty when healthy)."""
        return self._call(Call("health", {}, _identity))

    def replay(self, since: int, *, limit: int = 1000, topics: Iterable[str] = ()) -> Any:
        return self._call(Call("replay", {"since": since, "limit": limit,
                                          "topics": names("topics", topics)}, _identity))

    # ------------------------------------------------------------ path reservations
    def reserve(self, paths: Iterable[str], *, shared: bool = False, ttl: float | None = None,
                wait: float = 0.0, agent: str | None = None) -> Any:
        """Reserve path patterns (globs such as ``src/**/*.py``), all or none: exclusive by
        default, ``shared=True`` to coexist with other shared holders. Returns
        ``{agent, lease, reservations: [{pattern, mode, token, expires_in, renewed}]}``;
        Conflict (naming the holder, its pattern and expiry) when another agent holds an
        overlapping one that excludes this, at once or, with ``wait`` seconds, when the
        wait in the broker's first-come-first-served queue runs out."""
        body = {"agent": self._agent(agent), "paths": names("paths", paths),
                "mode": "shared" if check_bool("shared", shared) else "exclusive", "ttl": ttl, "wait_s": wait}
        wait_s = protocol.check_value(protocol.OPS["reserve"].by_name["wait_s"], wait)
        return self._call(Call("reserve", body, _identity, wait=wait_s))

    def release_paths(self, paths: Iterable[str] = (), *, agent: str | None = None) -> Any:
        """Release the agent's reservations on ``paths`` (all of them when empty);
        returns the released patterns."""
        return self._call(Call("release_paths", {"agent": self._agent(agent), "paths": names("paths", paths)},
                               lambda body: body["released"]))

    def reservations(self, *, agent: str | None = None, path: str | None = None) -> Any:
        """Reservations held now (a list): all, one agent's, or those overlapping ``path``."""
        return self._call(Call("reservations", {"agent": agent, "path": path},
                               lambda body: body["reservations"]))

    def reservation_state(self, *, agent: str | None = None, path: str | None = None) -> Any:
        """One snapshot: ``{reservations: [...], waiting: [{agent, paths, mode, gives_up_in}]}``,
        the reserves waiting in the broker's queue first come first."""
        return self._call(Call("reservations", {"agent": agent, "path": path}, _identity))


def _position(body: Any) -> int | None:
    return body["position"]


def _seq_of(body: Any) -> int:
    return body["seq"]


def _none_if_lost(err: RemoteError) -> None:
    """claim(): another agent holding the task is an answer (None), not an error."""
    if isinstance(err, Conflict) and err.details.get("status") == "claimed":
        return None
    raise err


class LeaseState:
    """What the client knows of its own lease; shared by both heartbeat loops. The
    constructor checks the agent's settings as the broker will, so a bad ttl or capability
    list fails where the client is made, not on first use."""

    def __init__(self, agent: str | None, capabilities: Iterable[str], metadata: dict[str, Any] | None,
                 ttl: float | None) -> None:
        if agent is not None:
            check_field("register", "agent", agent)
        caps = names("capabilities", capabilities) or []
        self.agent = agent
        self.capabilities = check_field("register", "capabilities", caps)
        self.metadata = check_field("register", "metadata", {} if metadata is None else metadata)
        self.ttl = None if ttl is None else check_field("register", "ttl", ttl)
        self.lease: int | None = None
        self.lost = 0

    def register_call(self) -> Call[dict[str, Any]]:
        return Call("register", {"agent": self.agent, "capabilities": self.capabilities,
                                 "metadata": self.metadata, "ttl": self.ttl}, _identity)

    def registered(self, body: dict[str, Any]) -> None:
        self.lease = body["lease"]
        self.ttl = body["ttl"]

    def heartbeat_call(self) -> Call[dict[str, Any]]:
        return Call("heartbeat", {"agent": self.agent, "lease": self.lease}, _identity)

    @property
    def interval(self) -> float:
        return max(0.05, (self.ttl or 30.0) * protocol.HEARTBEAT_EVERY)
