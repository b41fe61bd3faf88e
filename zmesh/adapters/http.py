"""``zmesh gateway``: the predecessor notifier's HTTP API, and claim, complete and wait for work,
for agents that speak neither ZeroMQ nor MCP (shell scripts with curl, other languages).

Built on FastAPI (Starlette, pydantic) and served by uvicorn. FastAPI writes the OpenAPI
schema (``/openapi.json``) and validates bodies from the same types the MCP tools use,
which are typed from the op table (zmesh/adapters/schemas.py).

Rules it keeps:

* An HTTP agent is named by ``session_id``, the predecessor's word for the agent. The
  gateway holds it as an AgentSession: one connection each, with its lease, its claim
  tokens and its inbox. HTTP callers pass ids only, never tokens.
* An agent's lease lives while it calls. Every request that names it renews the lease, and
  an open wait renews it as it waits. An agent that stops calling for ``--ttl`` seconds
  (default 300) loses its claims and reservations, as a dead ZeroMQ agent does. A session
  left unused that long is closed.
* Every input is checked where it enters. A body that is not JSON is 400. A field that
  breaks its rule, is missing or is unknown is 422, and the answer names the field. A body
  above the message limit is 413. The answer is always ``{code, message, field?}``.
* Broker answers map onto HTTP statuses (:data:`STATUS`): a refusal is 404 or 409. A broker
  that does not answer within ``--timeout`` is 503, never a hang.
* With a tokens file every call carries a bearer token, and acts only as the agent its
  token names (zmesh/adapters/http_auth.py): 401 without a known token, 403 as another
  agent.
* The predecessor's clients are served as they are: its status body on every call
  (zmesh/adapters/http_bodies.py: checked, what the broker keeps itself listed under
  ``ignored``), its ``POST /broadcast?message=...`` as well as the JSON body, and an assign
  that creates the task it hands out.
"""

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Annotated, Any, AsyncIterator, Literal, Optional

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .. import protocol
from ..client import AsyncClient
from ..errors import Conflict, InvalidArgument, ZmeshError
from ..protocol.fields import escape_controls
from . import defaults
from .http_auth import CALLER, OPEN_PATHS, Tokens, Unauthorized, allow
from .http_bodies import (Ack, Assign, Broadcast, Claim, Complete, Fail, ReleasePaths, Release, Report, Reserve,
                          Send, broadcast_fields, subject_of)
from .session import AgentSession, check_address

log = logging.getLogger("zmesh.adapters.http")

#: default lease TTL of an HTTP agent (the predecessor's claim TTL): it must call this often
DEFAULT_HTTP_TTL_S = defaults.HTTP_TTL_S
#: default and largest long-poll wait
DEFAULT_WAIT_S = defaults.HTTP_WAIT_S
DEFAULT_WAIT_MAX_S = defaults.HTTP_WAIT_MAX_S
#: most HTTP agents held at once (each holds a connection and an event subscription)
MAX_SESSIONS = 1000
#: HTTP status of each zmesh error code (anything else: 500)
STATUS = {
    "invalid_argument": 422, "bad_request": 422, "usage": 422, "config": 422, "too_large": 413,
    "not_found": 404, "conflict": 409, "not_owner": 409, "stale_token": 409, "claim_expired": 409,
    "lease_expired": 409, "nothing_to_claim": 404, "unreachable": 503, "no_reply": 504,
    "unauthorized": 401, "forbidden": 403,
}
def _error(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status)


class Sessions:
    """The HTTP agents the gateway holds (see the module rules)."""

    def __init__(self, endpoint: str | None, *, ttl: float, timeout: float, limit: int = MAX_SESSIONS) -> None:
        self.endpoint, self.ttl, self.timeout, self.limit = endpoint, ttl, timeout, limit
        self._by_agent: dict[str, AgentSession] = {}
        self._used: dict[str, float] = {}
        self._waiting: dict[str, int] = {}
        self._lock = asyncio.Lock()

    async def get(self, agent: str, capabilities: list[str] | None = None) -> AgentSession:
        """The agent's session, started, its lease renewed (registered with ``capabilities``
        when given). Refused unless the request's token may act as ``agent``."""
        allow(agent)
        async with self._lock:
            session = self._by_agent.get(agent)
            if session is None:
                if len(self._by_agent) >= self.limit:
                    raise InvalidArgument(f"the gateway holds {self.limit} agents already; one must stop "
                                          "calling for its TTL first", {"field": "session_id"})
                session = AgentSession(self.endpoint, agent, capabilities=capabilities or (), ttl=self.ttl,
                                       timeout=self.timeout, heartbeat=False)
                self._by_agent[agent] = session
        self._used[agent] = time.monotonic()
        if capabilities is not None:
            await session.set_capabilities(capabilities)
        if session.started:
            await session.renew()
        else:
            await session.start()
        return session

    @asynccontextmanager
    async def waiting(self, session: AgentSession) -> AsyncIterator[None]:
        """Keep the agent's lease alive while a wait is open."""
        self._waiting[session.agent] = self._waiting.get(session.agent, 0) + 1

        async def beat() -> None:
            while True:
                await asyncio.sleep(session.renew_every)
                try:
                    await session.renew()
                except ZmeshError as exc:
                    log.warning("lease renewal of %s during a wait failed: %s", session.agent, exc.message)
        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            self._waiting[session.agent] -= 1
            self._used[session.agent] = time.monotonic()

    async def reap(self) -> None:
        """Close sessions unused for their TTL (their lease lapsed at the broker already)."""
        now = time.monotonic()
        for agent in [a for a, t in self._used.items() if now - t > self.ttl and not self._waiting.get(a)]:
            session = self._by_agent.pop(agent, None)
            self._used.pop(agent, None)
            if session is not None:
                log.info("HTTP agent %s stopped calling for %g s; its session is closed", agent, self.ttl)
                await session.client.aclose(unregister=False)

    async def close(self) -> None:
        for session in list(self._by_agent.values()):
            await session.close()
        self._by_agent.clear()


def build_app(endpoint: str | None, *, ttl: float = DEFAULT_HTTP_TTL_S, timeout: float = 5.0,
              wait_max: float = DEFAULT_WAIT_MAX_S, max_body: int = protocol.MAX_MESSAGE_BYTES,
              tokens: Tokens | None = None) -> FastAPI:
    """The gateway's ASGI app (the caller serves it); with ``tokens``, every call needs a
    bearer token (zmesh/adapters/http_auth.py)."""
    sessions = Sessions(endpoint, ttl=ttl, timeout=timeout)
    ops = AsyncClient(endpoint, timeout=timeout)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async def reaper() -> None:
            while True:
                await asyncio.sleep(min(10.0, ttl / 2))
                await sessions.reap()
        task = asyncio.create_task(reaper())
        try:
            yield
        finally:
            task.cancel()
            await sessions.close()
            await ops.aclose()

    app = FastAPI(title="zmesh gateway", version=__version__, lifespan=lifespan,
                  description="HTTP for agents that speak neither ZeroMQ nor MCP: the predecessor "
                              "notifier's API, claim and complete, and a long-poll wait for work.")

    @app.exception_handler(ZmeshError)
    async def zmesh_error(_request: Request, exc: ZmeshError) -> JSONResponse:
        field = (exc.details or {}).get("field")
        return _error(STATUS.get(exc.code, 500), exc.code, exc.message, field)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:  # a bug of ours: logged, one line out
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, "internal", f"unexpected {type(exc).__name__} (the gateway's log has the traceback)")

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            return _error(400, "bad_request", f"the body is not JSON: {first.get('msg', '')}")
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or None
        if field is None:  # the body as a whole (a JSON list or string where an object belongs)
            return _error(422, "invalid_argument", f"the body must be a JSON object: {first.get('msg', 'invalid')}")
        return _error(422, "invalid_argument", f"field '{field}': {first.get('msg', 'invalid')}", field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Routing's own answers (no such path, a method it does not take) in the gateway's shape."""
        code = {404: "not_found", 405: "bad_request"}.get(exc.status_code, "bad_request")
        message = (f"no endpoint {request.method} {escape_controls(request.url.path)[:200]} (GET /openapi.json "
                   "lists them)" if exc.status_code in (404, 405) else str(exc.detail))
        response = _error(exc.status_code, code, message)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > max_body):
            return _error(413, "too_large", f"the body is above {max_body} bytes")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if size not in (None, "0") and not (kind == "application/json" or kind.endswith("+json")):
            return _error(415, "bad_request", f"the body must be JSON sent as content-type: application/json, "
                          f"not {escape_controls(kind or 'none')[:80]!r} (curl: -H 'content-type: application/json')",
                          "content-type")
        return await call_next(request)

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Any:
        if tokens is not None and request.url.path not in OPEN_PATHS:
            try:
                CALLER.set(tokens.caller(request.headers.get("authorization")))
            except Unauthorized as exc:
                response = _error(401, exc.code, exc.message, "Authorization")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        return await call_next(request)

    # ---------------------------------------------------------- the predecessor's API
    @app.post("/agent/{state}", summary="Report an agent's state (the predecessor notifier's call)")
    async def report(state: Annotated[Literal[protocol.REPORTS], Path(description="the state")],  # type: ignore[valid-type]
                     body: Report) -> dict[str, Any]:
        if body.status is not None and body.status != state:
            raise InvalidArgument(f"status '{body.status}' does not match the path's '{state}'", {"field": "status"})
        if state in ("busy", "completed") and not body.last_task:
            raise InvalidArgument(f"{state} needs last_task", {"field": "last_task"})
        reason = body.reason or body.message
        if state in ("blocked", "help") and not reason:
            raise InvalidArgument(f"{state} needs a reason (reason or message)", {"field": "reason"})
        session = await sessions.get(body.session_id, body.capabilities)
        got = await session.call(session.client.report, state, task=body.last_task,
                                 reason=reason if state in ("blocked", "help") else None,
                                 message=body.message, cost=body.cost_spent, requires=body.requires or ())
        got["ignored"] = body.ignored()
        return got  # type: ignore[no-any-return]

    @app.get("/status", summary="Every agent, the idle queue, open blockers and task counts")
    async def status() -> dict[str, Any]:
        return dict(await ops.status())

    @app.post("/task/assign", summary="Assign a task to one agent (pushed to it at once)",
              description="Claims the task on the agent's lease and pushes it to the agent. The task is "
                          "created first when it does not exist (unless create is false), as the predecessor's "
                          "assign defined the task it handed out.")
    async def assign(body: Assign) -> dict[str, Any]:
        allow(None)  # the gateway's own call: it assigns for whoever calls
        task = body.task()
        subject = subject_of(body.message, "message")[0] if body.message else None
        created = False
        if body.create is not False:
            if not body.queue:  # an unknown agent is 404 before a task is made for it
                await ops.agent_info(body.session_id)
            data = body.data if body.data is not None or body.message is None else {"description": body.message}
            try:
                await ops.create_task(task, data=data, priority=body.priority, requires=body.requires or ())
                created = True
            except Conflict as exc:
                if body.create or (exc.details or {}).get("reason") != "exists":
                    raise
        got: dict[str, Any] = dict(await ops.assign(body.session_id, task, ttl=body.ttl, queue=body.queue,
                                                    subject=subject))
        got.pop("token", None)  # the assignee's: its session holds it
        got["created"] = created
        got["ignored"] = body.ignored()
        return got

    @app.post("/broadcast", summary="Send a message to every live agent",
              description="The message comes in the JSON body or, as the predecessor sent it, in the query "
                          "string (`/broadcast?message=...`, also `session_id` and `priority`); a field given "
                          "in both must agree.")
    async def broadcast(request: Request, body: Optional[Broadcast] = None,
                        message: Annotated[Optional[str], Query(description="the message (the predecessor's form)")]
                        = None,
                        session_id: Annotated[Optional[str], Query(description="the sender")] = None,
                        priority: Annotated[Optional[str], Query(description="the message's priority")] = None
                        ) -> dict[str, Any]:
        sent = broadcast_fields(body, request.query_params, message=message, session_id=session_id,
                                 priority=priority)
        allow(sent.session_id)  # sent as that agent
        subject, text = subject_of(sent.message or "", "message")
        payload = sent.body if sent.body is not None else text
        got = await ops.send(subject, payload, all=True, priority=sent.priority, sender=sent.session_id)
        return {**{k: got[k] for k in ("id", "addressed", "online", "queued")}, "ignored": sent.ignored()}

    # ---------------------------------------------------------- an HTTP agent's work
    @app.post("/task/claim", summary="Claim a task by id, or the best available one")
    async def claim(body: Claim) -> dict[str, Any]:
        session = await sessions.get(body.session_id, body.capabilities)
        if body.task_id:
            return {"claimed": True, "task": await session.claim_task(body.task_id, body.ttl)}
        view = await session.claim_next(body.ttl)
        return {"claimed": view is not None, "task": view}

    @app.post("/task/complete", summary="Complete a task the agent holds")
    async def complete(body: Complete) -> dict[str, Any]:
        return await (await sessions.get(body.session_id)).complete(body.task_id, body.result)

    @app.post("/task/fail", summary="Report a failed attempt at a task the agent holds")
    async def fail(body: Fail) -> dict[str, Any]:
        return await (await sessions.get(body.session_id)).fail(body.task_id, body.error)

    @app.post("/task/release", summary="Hand a task back to the queue unchanged")
    async def release(body: Release) -> dict[str, Any]:
        return await (await sessions.get(body.session_id)).release(body.task_id)

    @app.get("/agent/{session_id}/wait", summary="Long-poll: wait until there is work for the agent",
             description="Answers {kind: task|message|timeout, ...}. A task it hands out carries a handle; "
                         "until the agent completes, fails or releases it, the next wait answers it again "
                         "(repeated: true) instead of claiming another, so a lost answer loses nothing.")
    async def wait(session_id: Annotated[str, Path(max_length=protocol.MAX_ID_BYTES)],
                   timeout_s: Annotated[float, Query(ge=0.0, le=wait_max, allow_inf_nan=False)] = min(
                       DEFAULT_WAIT_S, wait_max),
                   claim: bool = True,
                   capability: Annotated[Optional[list[str]], Query(max_length=protocol.MAX_LIST_ITEMS)] = None,
                   handle: Annotated[Optional[str], Query(max_length=protocol.MAX_ID_BYTES,
                                                          description="an earlier answer's handle: that task again")]
                   = None) -> dict[str, Any]:
        session = await sessions.get(protocol.KINDS["id"]("session_id", session_id), capability)
        async with sessions.waiting(session):
            return await session.wait_for_work(timeout_s, claim=claim, handle=handle)

    @app.get("/agent/{session_id}/messages", summary="The agent's unread messages (marked read unless peek)")
    async def messages(session_id: Annotated[str, Path(max_length=protocol.MAX_ID_BYTES)],
                       limit: Annotated[int, Query(ge=1, le=1000)] = 100, peek: bool = False) -> dict[str, Any]:
        session = await sessions.get(protocol.KINDS["id"]("session_id", session_id))
        return await session.read_messages(limit=limit, peek=peek)

    @app.post("/message/send", summary="Send a message to an agent, a group, a capability or all")
    async def send(body: Send) -> dict[str, Any]:
        address = check_address(body.to, body.group, body.capability, body.all)
        session = await sessions.get(body.session_id)
        return await session.send(body.subject, body.body, priority=body.priority,
                                  requires_ack=body.requires_ack, **address)

    @app.post("/message/ack", summary="Acknowledge a message")
    async def ack(body: Ack) -> dict[str, Any]:
        return await (await sessions.get(body.session_id)).ack(body.message_id, body.note)

    @app.post("/paths/reserve", summary="Reserve path patterns (exclusive unless shared), all or none")
    async def reserve(body: Reserve) -> dict[str, Any]:
        session = await sessions.get(body.session_id)
        return await session.reserve(body.paths, shared=body.shared, ttl=body.ttl, wait_s=body.wait_s)

    @app.post("/paths/release", summary="Release the agent's reservations (all when paths is empty)")
    async def release_paths(body: ReleasePaths) -> dict[str, Any]:
        return await (await sessions.get(body.session_id)).release_paths(body.paths or [])

    app.state.sessions = sessions
    return app
