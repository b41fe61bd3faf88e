"""``zmesh mcp``: an MCP server over stdio, built on the official SDK (``MCPServer``), that is
one agent on the mesh for a coding agent's model.

Rules it keeps:

* One process is one agent. :class:`zmesh.adapters.session.AgentSession` registers it, keeps
  its lease, holds its fencing and delivery tokens, and unregisters it when stdin closes.
  The model passes task ids and message ids only.
* The tools (:data:`TOOLS`) and their result shapes are a contract, and docs/MCP.md
  documents them. An argument that is a protocol field gets its schema from the op table
  (:func:`field_arg`: type, range, length, choices and description). No limit is written
  twice.
* Results are small: task and message views, never the broker's full records.
* Failures are tool errors. Each says what happened and what to call next (:data:`NEXT`),
  so the model can act on it.
* ``wait_for_work`` waits at most ``--wait-max`` seconds, 25 s by default: a stateless client
  (MCP 2026-07-28) or a proxy between them may cut a longer silent call, and it is well
  inside Codex CLI's 60 s tool timeout, which progress does not extend. Progress goes out
  every ~10 s when the client asked for it, as keepalives. A timeout is a normal result.
* ``wait_for_work`` is safe to call again after a lost answer: a task it handed out carries a
  ``handle``, and until that task is completed, failed or released, the next call answers it
  again (``repeated``) instead of claiming another (zmesh/adapters/grants.py).
* stdout carries protocol only: the SDK's stdio transport owns it, and logs go to stderr.
* ``--channel`` declares Claude Code's ``claude/channel`` capability. Assignments and urgent
  messages (critical, high) that arrive while no ``wait_for_work`` is waiting are pushed
  into the session as ``notifications/claude/channel``. They count as seen: they are marked
  read and not answered again by a later wait. Without ``--channel`` nothing is pushed.
"""

import functools
import hashlib
import logging
import os
import socket
from contextlib import asynccontextmanager
from typing import Annotated, Any, AsyncIterator, Literal, Optional

import orjson
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.stdio import stdio_server
from pydantic import BaseModel
from pydantic import Field as PydField
from typing_extensions import TypedDict

from .. import __version__
from .. import protocol
from ..client._inbox import Message
from ..errors import ZmeshError
from . import defaults
from .schemas import field_arg, handle_arg
from .session import PROGRESS_EVERY_S, AgentSession, check_address

log = logging.getLogger("zmesh.adapters.mcp")

#: default and largest wait of wait_for_work and reserve_paths (zmesh/adapters/defaults.py: why)
DEFAULT_WAIT_MAX_S = defaults.MCP_WAIT_MAX_S
#: largest --wait-max (Gemini CLI's default tool timeout is 10 min; Claude Code's is 30 min
#: without progress, and progress resets it)
MAX_WAIT_MAX_S = protocol.MAX_WAIT_S
#: the channel capability and notification of Claude Code (research preview)
CHANNEL_CAPABILITY = "claude/channel"
CHANNEL_METHOD = "notifications/claude/channel"
#: priorities a channel pushes into an idle session
CHANNEL_PRIORITIES = ("critical", "high")

INSTRUCTIONS = (
    "zmesh coordinates you with other agents. Loop: call wait_for_work (it blocks until a task "
    "or a message is for you, and claims the task); do the task; call complete_task (or fail_task "
    "with the reason, or release_task to hand it back). Before editing files others may touch, call "
    "reserve_paths; release_paths when done. Read and answer messages with read_messages, "
    "send_message and ack_message. Task ids and message ids are all you pass: zmesh keeps the tokens."
)

#: what the model should do after each error code (appended to the error's own line)
NEXT = {
    "lease_expired": "lease lost: this agent's claims went back to the queue; call claim_next or wait_for_work",
    "claim_expired": "the claim lapsed and the task went back to the queue; call claim_task to take it again "
                     "or claim_next for other work",
    "stale_token": "the task is no longer yours (it was claimed again since); call claim_next for other work",
    "not_owner": "the task is not yours; call claim_next for other work",
    "not_found": "check the id (list_agents, read_messages or wait_for_work show current ones)",
    "conflict": "it is not yours to take now (another agent holds it, or it is not available); call "
                "claim_next or wait_for_work for other work (for paths: work elsewhere, or call "
                "reserve_paths again with wait_s to queue for them)",
    "nothing_to_claim": "call wait_for_work to wait for one",
    "unreachable": "the zmesh broker does not answer; try again shortly (your claims stay on your lease "
                   "for its TTL)",
    "invalid_argument": "fix the argument named and call again",
    "bad_request": "fix the argument named and call again",
    "too_large": "send less (a smaller body or fewer items)",
}


# ---------------------------------------------------------------- results (the contract)
class TaskView(TypedDict):
    id: str
    type: str
    priority: int
    data: Any
    requires: list[str]
    attempts: int
    claimed: bool
    expires_in: Optional[float]


MessageView = TypedDict("MessageView", {
    "id": str, "from": Optional[str], "subject": str, "body": Any, "priority": str, "type": str,
    "requires_ack": bool, "correlation_id": Optional[str], "task": Optional[str], "ts": Optional[float]})


class WorkResult(TypedDict, total=False):
    kind: Literal["task", "message", "timeout"]
    task: TaskView
    message: MessageView
    assigned: bool
    #: names a task handed out: the same handle comes back when the answer is given again
    handle: str
    #: this task was handed to this agent before (an answer that may have been lost)
    repeated: bool
    waited_s: float


class ClaimResult(TypedDict):
    claimed: bool
    task: Optional[TaskView]


class TaskState(TypedDict, total=False):
    task: str
    status: Optional[str]
    attempts: Optional[int]


class StatusResult(TypedDict):
    agent: str
    state: str
    position: Optional[int]


class Reservation(TypedDict):
    pattern: str
    mode: str
    expires_in: Optional[float]


class ReserveResult(TypedDict):
    reservations: list[Reservation]


class ReleasePathsResult(TypedDict):
    released: list[str]


class SendResult(TypedDict):
    id: str
    addressed: int
    online: int
    queued: int


class ReadResult(TypedDict):
    messages: list[MessageView]
    more: bool


class AckResult(TypedDict):
    id: str
    acked: bool
    already: bool


class AgentView(TypedDict):
    id: str
    state: str
    liveness: str
    task: Optional[str]
    capabilities: list[str]
    message: Optional[str]


class AgentsResult(TypedDict):
    agents: list[AgentView]


class WhoAmI(TypedDict):
    agent: str
    endpoint: str
    lease: Optional[int]
    capabilities: list[str]
    holding: list[str]
    reservations: list[Reservation]
    unread_pushed: int
    wait_max_s: float


#: the tools, in the order they are listed (docs/MCP.md and the tests check against it)
TOOLS = ("wait_for_work", "claim_next", "claim_task", "complete_task", "fail_task", "release_task",
         "set_status", "reserve_paths", "release_paths", "send_message", "read_messages", "ack_message",
         "list_agents", "whoami")


def default_agent(env: dict[str, str] | None = None) -> str:
    """``ZMESH_AGENT``, else host:working-directory (shortened with a hash to fit an id)."""
    env = dict(os.environ) if env is None else env
    if env.get("ZMESH_AGENT"):
        return protocol.KINDS["id"]("ZMESH_AGENT", env["ZMESH_AGENT"])
    name = f"{socket.gethostname()}:{os.getcwd()}"
    if len(name.encode()) > protocol.MAX_ID_BYTES:
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = f"{socket.gethostname()[:80]}:{os.path.basename(os.getcwd())[:80]}~{digest}"
    return protocol.KINDS["id"]("agent", name)


class _Failure(ToolError):
    """A tool error the model can act on: the zmesh error's line and what to call next."""


#: a refusal about what this agent holds itself, named by its details' "held": a hint of its own
HELD_BY_ME = ("you hold these tasks yourself: call complete_task, fail_task or release_task on them "
              "first")


def _fail(exc: ZmeshError) -> _Failure:
    hint = HELD_BY_ME if exc.code == "conflict" and "held" in (exc.details or {}) else NEXT.get(exc.code, "")
    return _Failure(f"{exc.code}: {exc.message}" + (f" -> {hint}" if hint else ""))


def _acting(fn: Any) -> Any:
    """A tool body whose zmesh errors become tool errors with what to do next (the SDK reads
    the signature through functools.wraps)."""
    @functools.wraps(fn)
    async def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except ZmeshError as exc:
            raise _fail(exc) from None
    return run


class _ChannelNotification(BaseModel):
    method: str = CHANNEL_METHOD
    params: dict[str, Any]


class _SessionGrab:
    """Middleware that keeps the client's session once it is initialized, so an idle session
    can be pushed to (channels); it changes nothing it sees."""

    def __init__(self) -> None:
        self.session: Any = None

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        if self.session is None and ctx.method == "notifications/initialized":
            self.session = ctx.session
        return await call_next(ctx)


def build_server(session: AgentSession, *, wait_max: float = DEFAULT_WAIT_MAX_S, channel: bool = False,
                 progress_every: float = PROGRESS_EVERY_S) -> MCPServer:
    """The MCP server for one agent session (the caller runs it and closes the session)."""
    grab = _SessionGrab()

    @asynccontextmanager
    async def lifespan(_server: MCPServer) -> AsyncIterator[None]:
        try:
            await session.start()
        except ZmeshError as exc:  # serve anyway: each tool says the broker is away and starts it later
            log.warning("broker not reached at start (%s); tools will retry", exc.message)
        try:
            yield None
        finally:
            await session.close()
            log.info("agent %s unregistered; MCP server stopping", session.agent)

    server = MCPServer("zmesh", version=__version__, instructions=INSTRUCTIONS, lifespan=lifespan,
                       middleware=[grab] if channel else None, log_level="WARNING")
    if channel:
        session.on_idle_push = _relay(session, grab)

    Wait = Annotated[float, PydField(ge=0.0, le=wait_max, allow_inf_nan=False,
                                     description=f"seconds to wait at most (0..{wait_max:g}); a timeout is a "
                                                 "normal result")]

    @server.tool(description="Block until there is work for this agent: a task assigned to it or claimable "
                 "by it (claimed for you unless claim=false), or a message for it; or until timeout_s "
                 "passes. Returns {kind: task|message|timeout, task | message, handle, waited_s}. Call it "
                 "again after a timeout. Safe to call again when an answer was lost: until you complete, fail "
                 "or release a task it gave you, it answers that task again (repeated: true, same handle) "
                 "instead of claiming another, so finish the task before waiting for the next. You are shown "
                 "as idle while waiting and busy after a claim.")
    @_acting
    async def wait_for_work(ctx: Context, timeout_s: Wait = wait_max,
                            claim: Annotated[bool, PydField(description="claim the task found (false: only "
                                                            "name it)")] = True,
                            ttl: field_arg("claim_next", "ttl", "seconds the claim lasts unless renewed "
                                           "(default: as long as this agent is connected)") = None,
                            handle: handle_arg("the handle of an earlier answer: that task again, while you "
                                               "still hold it (not needed to get a lost answer again)") = None
                            ) -> WorkResult:
        async def progress(done: float, total: float) -> None:
            await ctx.report_progress(done, total, f"waited {done:.0f} of {total:.0f} s for work")
        return await session.wait_for_work(timeout_s, claim=claim, ttl=ttl,  # type: ignore[return-value]
                                           handle=handle, progress=progress, progress_every=progress_every)

    @server.tool(description="Claim the best available task this agent can do (highest priority, then "
                 "oldest). Returns {claimed, task}; claimed=false when there is none (call wait_for_work).")
    @_acting
    async def claim_next(ttl: field_arg("claim", "ttl") = None) -> ClaimResult:
        view = await session.claim_next(ttl)
        return {"claimed": view is not None, "task": view}  # type: ignore[typeddict-item]

    @server.tool(description="Claim one task by id. Returns {claimed: true, task}; an error names the holder "
                 "when another agent has it.")
    @_acting
    async def claim_task(task: field_arg("claim", "task"), ttl: field_arg("claim", "ttl") = None) -> ClaimResult:
        return {"claimed": True, "task": await session.claim_task(task, ttl)}  # type: ignore[typeddict-item]

    @server.tool(description="Mark a task you hold done, with an optional result (any JSON). Returns "
                 "{task, status}.")
    @_acting
    async def complete_task(task: field_arg("complete", "task"),
                            result: field_arg("complete", "result", "what the task produced (any JSON)") = None
                            ) -> TaskState:
        return await session.complete(task, result)  # type: ignore[return-value]

    @server.tool(description="Report that a task you hold failed, with the reason. It goes back to the queue "
                 "for another attempt, or is dead after its last one. Returns {task, status, attempts}.")
    @_acting
    async def fail_task(task: field_arg("fail", "task"), error: field_arg("fail", "error")) -> TaskState:
        return await session.fail(task, error)  # type: ignore[return-value]

    @server.tool(description="Hand a task you hold back to the queue unchanged (no attempt counted). "
                 "Returns {task, status}.")
    @_acting
    async def release_task(task: field_arg("release", "task")) -> TaskState:
        return await session.release(task)  # type: ignore[return-value]

    @server.tool(description="Tell the mesh how you are: idle, busy (with task), blocked or help (with "
                 "reason), completed (with task). Returns {agent, state, position in the idle queue}.")
    @_acting
    async def set_status(state: field_arg("report", "state"), task: field_arg("report", "task") = None,
                         reason: field_arg("report", "reason") = None,
                         message: field_arg("report", "message") = None,
                         cost: field_arg("report", "cost") = None) -> StatusResult:
        return await session.set_status(state, task=task, reason=reason,  # type: ignore[return-value]
                                        message=message, cost=cost)

    @server.tool(description="Reserve path patterns (globs relative to the repository root, e.g. "
                 "src/**/*.py) before editing: exclusive unless shared=true, all or none. A conflict names "
                 "the holder; with wait_s the request queues (first come first served) until granted. "
                 "Reserving again renews. Returns {reservations: [{pattern, mode, expires_in}]}.")
    @_acting
    async def reserve_paths(paths: field_arg("reserve", "paths"),
                            shared: Annotated[bool, PydField(description="shared (coexists with other "
                                                             "shared holders) instead of exclusive")] = False,
                            ttl: field_arg("reserve", "ttl") = None,
                            wait_s: Annotated[float, PydField(ge=0.0, le=wait_max, allow_inf_nan=False,
                                                              description="seconds to queue for the paths "
                                                              f"when held (0..{wait_max:g}; 0: refuse at "
                                                              "once)")] = 0.0) -> ReserveResult:
        return await session.reserve(paths, shared=shared, ttl=ttl, wait_s=wait_s)  # type: ignore[return-value]

    @server.tool(description="Release your reservations on these patterns, or all of them when paths is "
                 "empty. Returns {released}.")
    @_acting
    async def release_paths(paths: field_arg("release_paths", "paths") = None) -> ReleasePathsResult:
        return await session.release_paths(paths or [])  # type: ignore[return-value]

    @server.tool(description="Send a message to one agent (to), a group, every agent with a capability, or "
                 "all agents (exactly one of them). Returns {id, addressed, online, queued}.")
    @_acting
    async def send_message(subject: field_arg("send", "subject"), body: field_arg("send", "body") = None,
                           to: field_arg("send", "to") = None, group: field_arg("send", "group") = None,
                           capability: field_arg("send", "capability") = None,
                           all: Annotated[bool, PydField(description="address: every live agent")] = False,
                           priority: field_arg("send", "priority") = "normal",
                           requires_ack: field_arg("send", "requires_ack") = False,
                           correlation_id: field_arg("send", "correlation_id") = None) -> SendResult:
        address = check_address(to, group, capability, all)
        return await session.send(subject, body, priority=priority or "normal",  # type: ignore[return-value]
                                  requires_ack=bool(requires_ack), correlation_id=correlation_id, **address)

    @server.tool(description="Your unread messages, oldest first, marked read unless peek=true. Returns "
                 "{messages, more}. Ack the ones that ask for it (requires_ack) with ack_message.")
    @_acting
    async def read_messages(limit: Annotated[int, PydField(ge=1, le=100, description="most messages to "
                                                           "return (1..100)")] = 20,
                            peek: Annotated[bool, PydField(description="leave them unread")] = False
                            ) -> ReadResult:
        return await session.read_messages(limit=limit, peek=peek)  # type: ignore[return-value]

    @server.tool(description="Acknowledge a message (required for messages with requires_ack, or they are "
                 "delivered again). Returns {id, acked, already}.")
    @_acting
    async def ack_message(message: field_arg("ack", "id"), note: field_arg("ack", "note") = None) -> AckResult:
        return await session.ack(message, note)  # type: ignore[return-value]

    @server.tool(description="The agents on the mesh: id, state (idle, busy, blocked, help), liveness, task, "
                 "capabilities.")
    @_acting
    async def list_agents() -> AgentsResult:
        return await session.agents()  # type: ignore[return-value]

    @server.tool(description="Who this agent is on the mesh: its id, broker, lease, capabilities, the tasks it "
                 "holds and its path reservations.")
    @_acting
    async def whoami() -> WhoAmI:
        me = await session.whoami()
        return {**me, "wait_max_s": wait_max}  # type: ignore[typeddict-item]

    return server


def _relay(session: AgentSession, grab: _SessionGrab) -> Any:
    """The channel relay: an assignment or urgent message pushed while nobody waits goes into
    the client's session as a channel notification (when the client is initialized)."""
    import asyncio

    async def send(kind: str, msg: Message) -> None:
        if grab.session is None:
            return
        if kind == "task":
            content = (f"zmesh assigned task '{msg.task}' to you (claimed). Work on it, then call "
                       f"complete_task (or fail_task / release_task).")
            meta = {"kind": "task", "task": msg.task or "", "priority": msg.priority}
        else:
            content = f"zmesh message {msg.id} from {msg.sender or '-'}: {msg.subject}"
            if msg.body is not None:
                content += "\n" + orjson.dumps(msg.body).decode()[:2000]
            meta = {"kind": "message", "id": msg.id, "priority": msg.priority, "sender": msg.sender or ""}
        await grab.session.send_notification(_ChannelNotification(params={"content": content, "meta": meta}))
        await session.surfaced(kind, msg)

    def relay(kind: str, msg: Message) -> None:
        if kind == "message" and msg.priority not in CHANNEL_PRIORITIES:
            return
        asyncio.get_running_loop().create_task(send(kind, msg))
    return relay


async def serve_stdio(session: AgentSession, *, wait_max: float = DEFAULT_WAIT_MAX_S, channel: bool = False,
                      progress_every: float = PROGRESS_EVERY_S) -> None:
    """Serve MCP on stdin/stdout until stdin closes; the session is closed (the agent
    unregistered) on the way out."""
    server = build_server(session, wait_max=wait_max, channel=channel, progress_every=progress_every)
    if not channel:
        await server.run_stdio_async()
        return
    # The channel capability is experimental: the SDK declares it only through the low-level
    # server's initialization options (run_stdio_async passes none).
    low = server._lowlevel_server
    async with stdio_server() as (read, write):
        await low.run(read, write, low.create_initialization_options(
            experimental_capabilities={CHANNEL_CAPABILITY: {}}))
