"""The ops of the public client API, defined once for both drivers (_live_api.LiveApi
adds those that stream or wait, and is what the drivers inherit).

Rules: a method turns its Python arguments into a request body and nothing more: the
body is checked by the broker's own validation before it is sent (see
``ClientCore.exchange``), so a bad value is a ``BadRequest``/``TooLarge`` naming the field,
never a TypeError/ValueError from inside. Python-only mistakes JSON would hide are caught
here (_checks.py): a bare string where a list of names is due, a non-iterable, an empty
agent name that would silently fall back to the client's. ``_call`` (one request) and
``_flow`` (a flow of them, _flows.py) are the driver's: they return the result (Client) or
an awaitable of it (AsyncClient); _dual.py types each method for both from this one
definition. Results are the reply bodies as decoded (plain dicts, typed by
``zmesh.protocol.records``) or what the method's converter makes of them (a ``Claim``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .. import protocol
from ..errors import Conflict, RemoteError

# the result types, imported for real so typing.get_type_hints(Client.task) resolves
from ..protocol.records import (
    Agent,
    AgentList,
    Blocker,
    BlockerPage,
    BlockerRaised,
    Health,
    Hello,
    Helper,
    Lease,
    Presence,
    Replay,
    Reservation,
    ReservationState,
    Reserved,
    Snapshot,
    Status,
    Task,
    TaskPage,
    Unregistered,
)
from ._admin_api import AdminApi
from ._checks import (
    MAX_TIMEOUT_S,
    MIN_TIMEOUT_S,
    check_bool,
    check_field,
    check_timeout,
    names,
)
from ._dual import op
from ._flows import LeaseState
from ._messages_api import MessagesApi
from ._protocol import Call, Claim, _identity, _to_claim

__all__ = ["MAX_TIMEOUT_S", "MIN_TIMEOUT_S", "NO_CONNECT_OPS", "Api", "LeaseState", "check_bool",
           "check_field", "check_timeout", "names"]

#: ops a client sends before (or instead of) registering its agent: they never trigger the
#: implicit connect that registers it
NO_CONNECT_OPS = frozenset({"hello", "register", "unregister", "heartbeat"})

class Api(MessagesApi, AdminApi):
    """Every op that is one request or a flow of them, defined once (the message ops in
    MessagesApi, the admin ops in AdminApi; ``_agent`` and the driver's hooks in
    _flows.DriverHooks). _live_api.LiveApi adds those that stream or wait."""

    @op
    def hello(self) -> Hello:
        return self._call(Call("hello", {}, _identity))

    @op
    def register(self, agent: str | None = None, *, capabilities: Iterable[str] = (),
                 metadata: dict[str, Any] | None = None, ttl: float | None = None) -> Lease:
        return self._call(Call("register", {
            "agent": self._agent(agent), "capabilities": names("capabilities", capabilities),
            "metadata": {} if metadata is None else metadata, "ttl": ttl}, _identity))

    @op
    def heartbeat(self, agent: str | None = None, *, lease: int | None = None) -> Lease:
        return self._call(Call("heartbeat", {"agent": self._agent(agent), "lease": lease}, _identity))

    @op
    def unregister(self, agent: str | None = None) -> Unregistered:
        return self._call(Call("unregister", {"agent": self._agent(agent)}, _identity))

    @op
    def create_task(self, task_id: str, *, type: str = "task", data: Any = None, priority: int = 0,
                    requires: Iterable[str] = (), max_attempts: int = 3,
                    depends_on: Iterable[str] = ()) -> Task:
        """Create a task; returns its record. Raises Conflict if the id exists."""
        return self._call(Call("task_create", {
            "id": task_id, "type": type, "data": data, "priority": priority,
            "requires": names("requires", requires), "max_attempts": max_attempts,
            "depends_on": names("depends_on", depends_on)}, _identity))

    @op
    def claim(self, task_id: str, *, agent: str | None = None, ttl: float | None = None) -> Claim | None:
        """Claim -> Claim, or None when another agent holds the task (lost the race).
        Raises NotFound for an unknown task and Conflict when it is not claimable."""
        return self._call(Call("claim", {"task": task_id, "agent": self._agent(agent), "ttl": ttl},
                               _to_claim, _none_if_lost))

    @op
    def try_claim(self, task_id: str, *, agent: str | None = None, ttl: float | None = None) -> Claim:
        """Like claim, but a lost race raises Conflict (with the holder) instead of None."""
        return self._call(Call("claim", {"task": task_id, "agent": self._agent(agent), "ttl": ttl},
                               _to_claim))

    @op
    def claim_next(self, *, agent: str | None = None, capabilities: Iterable[str] | None = None,
                   ttl: float | None = None) -> Claim | None:
        """The best available task this agent can do -> Claim (with .task), or None."""
        return self._call(Call("claim_next", {
            "agent": self._agent(agent), "ttl": ttl,
            "capabilities": names("capabilities", capabilities)}, _to_claim))

    @op
    def next_task(self, *, agent: str | None = None, capabilities: Iterable[str] | None = None) -> Task | None:
        """The task claim_next would take now, without claiming it (a task record), or None.
        ``capabilities`` default to the agent's registered ones (the client's agent unless
        named; none for a client without one)."""
        return self._call(Call("task_next", {"agent": self.agent if agent is None else agent,
                                             "capabilities": names("capabilities", capabilities)}, _identity))

    @op
    def complete(self, task_id: str, *, token: int | None = None, result: Any = None,
                 agent: str | None = None) -> Task:
        return self._call(Call("complete", {"task": task_id, "agent": self._agent(agent),
                                            "token": token, "result": result}, _identity))

    @op
    def fail(self, task_id: str, *, error: str, token: int | None = None,
             agent: str | None = None) -> Task:
        return self._call(Call("fail", {"task": task_id, "agent": self._agent(agent),
                                        "token": token, "error": error}, _identity))

    @op
    def release(self, task_id: str, *, token: int | None = None, agent: str | None = None) -> Task:
        return self._call(Call("release", {"task": task_id, "agent": self._agent(agent),
                                           "token": token}, _identity))

    @op
    def renew(self, task_id: str, *, token: int | None = None, ttl: float | None = None,
              agent: str | None = None) -> Claim:
        """Extend a claim during long work -> Claim. Raises LeaseExpired/ClaimExpired if it
        lapsed, StaleToken/NotOwner if another claim replaced it."""
        return self._call(Call("renew", {"task": task_id, "agent": self._agent(agent),
                                         "token": token, "ttl": ttl}, _to_claim))

    progress = renew

    @op
    def publish(self, topic: str, data: Any = None, *, agent: str | None = None) -> int:
        """Broadcast ``data`` to every subscriber as the event ``msg.<topic>``; returns
        its seq. The message is in the event log, so subscribers that were away replay it."""
        return self._call(Call("publish", {"topic": topic, "data": data,
                                           "agent": self.agent if agent is None else agent}, _seq_of))

    @op
    def task(self, task_id: str) -> Task:
        return self._call(Call("task_get", {"task": task_id}, _identity))

    @op
    def tasks(self, *, status: str | None = None, after: str = "", limit: int = 1000) -> list[Task]:
        """One page of tasks (a list). See task_page for whether more follow."""
        return self._call(Call("task_list", {"status": status, "after": after, "limit": limit},
                               lambda body: body["tasks"]))

    @op
    def task_page(self, *, status: str | None = None, after: str = "", limit: int = 1000) -> TaskPage:
        """One page: ``{"tasks": [...], "more": bool, "seq": int}``; pass the last id as
        ``after`` for the next page."""
        return self._call(Call("task_list", {"status": status, "after": after, "limit": limit},
                               _identity))

    @op
    def agents(self) -> list[Agent]:
        """Every agent: presence, liveness, lease, stats and claims held (a list)."""
        return self._call(Call("agent_list", {}, lambda body: body["agents"]))

    @op
    def agent_list(self) -> AgentList:
        """``{agents, idle_queue, seq}``: every agent and the idle queue in arrival order."""
        return self._call(Call("agent_list", {}, _identity))

    @op
    def snapshot(self) -> Snapshot:
        """Agents, idle queue, open blockers and task counts at one ``seq`` (see Roster)."""
        return self._call(Call("snapshot", {}, _identity))

    # ---------------------------------------------------------------- presence
    @op
    def report(self, state: str, *, task: str | None = None, reason: str | None = None,
               message: str | None = None, cost: float | None = None,
               requires: Iterable[str] = (), threshold: float = 0.5, agent: str | None = None) -> Presence:
        """Report presence (idle, busy, blocked, completed, help) -> ``{agent, state,
        position, helpers, seq}``. idle/completed are refused (Conflict) while the agent
        holds a task claim."""
        return self._call(Call("report", {
            "agent": self._agent(agent), "state": state, "task": task, "reason": reason,
            "message": message, "cost": cost, "requires": names("requires", requires),
            "threshold": threshold}, _identity))

    @op
    def idle(self, *, message: str | None = None, cost: float | None = None,
             agent: str | None = None) -> int | None:
        """Report idle -> the agent's place in the idle queue (1: waiting longest)."""
        return self._call(Call("report", {"agent": self._agent(agent), "state": "idle",
                                          "message": message, "cost": cost}, _position))

    @op
    def busy(self, task: str, *, message: str | None = None, cost: float | None = None,
             agent: str | None = None) -> Presence:
        return self.report("busy", task=task, message=message, cost=cost, agent=agent)

    @op
    def blocked(self, reason: str, *, task: str | None = None, message: str | None = None,
                cost: float | None = None, agent: str | None = None) -> Presence:
        return self.report("blocked", reason=reason, task=task, message=message, cost=cost, agent=agent)

    @op
    def completed(self, task: str, *, message: str | None = None, cost: float | None = None,
                  agent: str | None = None) -> Presence:
        """Report a task done (counted once per task; the agent is idle again)."""
        return self.report("completed", task=task, message=message, cost=cost, agent=agent)

    @op
    def help(self, reason: str, *, requires: Iterable[str] = (), threshold: float = 0.5,
             task: str | None = None, message: str | None = None, agent: str | None = None) -> list[Helper]:
        """Ask for help -> the helpers found (idle, alive agents covering ``requires``)."""
        return self._call(Call("report", {
            "agent": self._agent(agent), "state": "help", "reason": reason, "task": task,
            "message": message, "requires": names("requires", requires), "threshold": threshold},
            lambda body: body["helpers"]))

    @op
    def find_helpers(self, required_capabilities: Iterable[str], threshold: float = 0.5, *,
                     limit: int = 100) -> list[Helper]:
        """Idle, alive agents covering at least ``threshold`` of the capabilities: best
        cover first, then longest waiting (a list of ``{agent, cover, matched, missing,
        position, waiting_since, capabilities}``)."""
        return self._call(Call("helpers", {
            "requires": names("required_capabilities", required_capabilities),
            "threshold": threshold, "limit": limit}, lambda body: body["helpers"]))

    @op
    def agent_info(self, agent: str | None = None) -> Agent:
        """One agent's presence, liveness and stats (tasks done and failed, cost, uptime,
        claims held)."""
        return self._call(Call("agent_get", {"agent": self._agent(agent)}, _identity))

    stats = agent_info

    @op
    def report_blocker(self, type: str, description: str, severity: str = "medium",
                       required_capabilities: Iterable[str] = (), task: str | None = None, *,
                       threshold: float = 0.5, agent: str | None = None) -> BlockerRaised:
        """Raise a blocker: the agent becomes blocked, ``blocker.raised`` is published ->
        ``{blocker, helpers, seq}``."""
        return self._call(Call("blocker_raise", {
            "agent": self._agent(agent), "type": type, "description": description,
            "severity": severity, "requires": names("required_capabilities", required_capabilities),
            "task": task, "threshold": threshold}, _identity))

    @op
    def resolve_blocker(self, blocker: str, *, resolution: str | None = None,
                        agent: str | None = None) -> Blocker:
        """Resolve an open blocker -> the blocker record."""
        return self._call(Call("blocker_resolve", {"blocker": blocker, "agent": self.agent if agent is None else agent,
                                                   "resolution": resolution}, _identity))

    @op
    def blocker_page(self, *, status: str = "open", after: str = "", limit: int = 1000) -> BlockerPage:
        """One page: ``{"blockers": [...], "more": bool, "seq": int}``."""
        return self._call(Call("blocker_list", {"status": status, "after": after, "limit": limit},
                               _identity))

    @op
    def blockers(self, *, status: str = "open", after: str = "", limit: int = 1000) -> list[Blocker]:
        """Blockers, oldest first (a list): open ones by default."""
        return self._call(Call("blocker_list", {"status": status, "after": after, "limit": limit},
                               lambda body: body["blockers"]))

    @op
    def status(self) -> Status:
        return self._call(Call("status", {}, _identity))

    @op
    def health(self) -> Health:
        """The broker's health: ``{healthy, reasons, broker_id, version, uptime, seq,
        store_bytes, used_bytes, map_size, map_use, commit_p95_ms, ...}`` (``reasons``: one
        line per check that failed; empty when healthy)."""
        return self._call(Call("health", {}, _identity))

    @op
    def replay(self, since: int, *, limit: int = 1000, topics: Iterable[str] = ()) -> Replay:
        return self._call(Call("replay", {"since": since, "limit": limit,
                                          "topics": names("topics", topics)}, _identity))

    # ------------------------------------------------------------ path reservations
    @op
    def reserve(self, paths: Iterable[str], *, shared: bool = False, ttl: float | None = None,
                wait: float = 0.0, agent: str | None = None) -> Reserved:
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

    @op
    def release_paths(self, paths: Iterable[str] = (), *, agent: str | None = None) -> list[str]:
        """Release the agent's reservations on ``paths`` (all of them when empty);
        returns the released patterns."""
        return self._call(Call("release_paths", {"agent": self._agent(agent), "paths": names("paths", paths)},
                               lambda body: body["released"]))

    @op
    def reservations(self, *, agent: str | None = None, path: str | None = None) -> list[Reservation]:
        """Reservations held now (a list): all, one agent's, or those overlapping ``path``."""
        return self._call(Call("reservations", {"agent": agent, "path": path},
                               lambda body: body["reservations"]))

    @op
    def reservation_state(self, *, agent: str | None = None, path: str | None = None) -> ReservationState:
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
        return
    raise err
