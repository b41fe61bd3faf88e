"""The gateway's request bodies (zmesh/adapters/http.py serves them): pydantic models typed
from the op table, so FastAPI checks each field by the protocol's own rule and writes it into
the OpenAPI schema.

Rules it keeps:

* A body is closed: an unknown field is a 422 naming it (``extra="forbid"``).
* The predecessor's clients are served as they are. They sent one status body with every
  call (``session_id, status, timestamp, last_task, capabilities, cost_spent,
  tasks_completed, waiting_since, message``): each body takes those fields, checks them, and
  names the ones the broker keeps itself under ``ignored``. A time is Unix seconds or ISO
  8601 (zmesh/protocol/times.py).
* A free-text message becomes a subject losslessly: its first line (shortened), and the whole
  text in the body when it is more than one short line.
"""

from typing import Annotated, Any, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic import Field as PydField

from .. import protocol
from ..errors import InvalidArgument, ZmeshError
from ..protocol.fields import CONTROL_CHARS
from . import defaults
from .schemas import field_arg, time_arg

#: longest subject made from a predecessor's free-text message (the whole text goes in the body)
SUBJECT_CHARS = 120

Agent = field_arg("register", "agent", "the agent (the predecessor's session id)")
TaskId = field_arg("claim", "task", "task id")
Text = field_arg("report", "message")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Legacy(_Body):
    """The fields the predecessor's client sent with every call, whatever the endpoint: each is
    checked, and those the broker keeps itself (its own clock and counts) are ignored and
    named in the answer's ``ignored``."""

    IGNORED: ClassVar[tuple[str, ...]] = ("timestamp", "tasks_completed", "waiting_since")

    timestamp: time_arg("when the client sent this; checked, and the broker keeps its own time") = None
    tasks_completed: Optional[Annotated[int, PydField(ge=0)]] = PydField(
        None, description="accepted; the broker counts completions itself")
    waiting_since: time_arg("since when the agent waits; checked, and the broker keeps its own") = None

    def ignored(self) -> list[str]:
        return [f for f in self.IGNORED if getattr(self, f) is not None]


class Report(_Legacy):
    """The predecessor notifier's body, with zmesh's additions (reason, requires)."""

    session_id: Agent
    status: Optional[Literal[protocol.REPORTS]] = PydField(  # type: ignore[valid-type]
        None, description="the state again (the path says it; when given it must match)")
    last_task: field_arg("report", "task", "the task (required for busy and completed)") = None
    capabilities: field_arg("register", "capabilities", "the agent's capabilities (registers it with them)") = None
    cost_spent: field_arg("report", "cost") = None
    message: Text = None
    reason: field_arg("report", "reason", "why (blocked, help); default: message") = None
    requires: field_arg("report", "requires", "help: capabilities wanted of helpers") = None


class _Elsewhere(_Legacy):
    """The predecessor's report fields on a call that is not a report (it sent one body
    everywhere): checked, and ignored."""

    IGNORED: ClassVar[tuple[str, ...]] = ("status", "timestamp", "capabilities", "cost_spent", "tasks_completed",
                                          "waiting_since")

    status: Optional[Literal[protocol.REPORTS]] = PydField(  # type: ignore[valid-type]
        None, description="accepted (the predecessor sent it everywhere); ignored")
    capabilities: field_arg("register", "capabilities", "accepted; ignored") = None
    cost_spent: field_arg("report", "cost", "accepted; ignored") = None


class Assign(_Elsewhere):
    session_id: field_arg("assign", "agent", "the agent to assign the task to")
    task_id: Optional[field_arg("assign", "task")] = None
    last_task: field_arg("assign", "task", "the predecessor's name for task_id") = None
    message: field_arg("report", "message", "what the task is (the predecessor's form): the pushed "
                       "assignment's subject (its first line), and the task's data.description when this "
                       "call creates the task") = None
    create: Optional[bool] = PydField(None, description="true: create the task first (refused if it exists); "
                                      "false: it must exist; not given: create it when it does not exist")
    data: field_arg("task_create", "data", "the task's data, when this call creates it") = None
    priority: field_arg("task_create", "priority") = 0
    requires: field_arg("task_create", "requires") = None
    ttl: field_arg("assign", "ttl") = None
    queue: field_arg("assign", "queue") = False

    def task(self) -> str:
        if self.task_id and self.last_task and self.task_id != self.last_task:
            raise InvalidArgument("task_id and last_task name two tasks", {"field": "last_task"})
        task = self.task_id or self.last_task
        if not task:
            raise InvalidArgument("field 'task_id': required (or the predecessor's last_task)", {"field": "task_id"})
        return task


class Broadcast(_Elsewhere):
    message: field_arg("report", "message", "the message; required here unless the query string gives it "
                       "(the predecessor's POST /broadcast?message=...). Its first line is the subject; "
                       "a longer or multi-line one is the body as well") = None
    body: field_arg("send", "body") = None
    session_id: field_arg("send", "from", "the sender") = None
    priority: field_arg("send", "priority") = "normal"
    last_task: field_arg("report", "task", "accepted; ignored") = None

    IGNORED: ClassVar[tuple[str, ...]] = _Elsewhere.IGNORED + ("last_task",)


def subject_of(text: str, field: str) -> tuple[str, str | None]:
    """A message's subject from a free text: the text itself when it is one short line, else
    its first line shortened (and then the whole text is returned to go in the body)."""
    try:
        return protocol.KINDS["name"](field, text), None
    except ZmeshError:
        pass
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    line = CONTROL_CHARS.sub(" ", line).strip()
    if not line:
        raise InvalidArgument(f"field '{field}' has no text", {"field": field})
    return (line if len(line) <= SUBJECT_CHARS else line[:SUBJECT_CHARS - 1] + "\u2026"), text


class Claim(_Body):
    session_id: Agent
    task_id: Optional[TaskId] = PydField(None, description="the task; without it the best available one")
    ttl: field_arg("claim", "ttl") = None
    capabilities: field_arg("register", "capabilities", "the agent's capabilities (registers it with them)") = None


class Complete(_Body):
    session_id: Agent
    task_id: TaskId
    result: field_arg("complete", "result", "what the task produced (any JSON)") = None


class Fail(_Body):
    session_id: Agent
    task_id: TaskId
    error: field_arg("fail", "error")


class Release(_Body):
    session_id: Agent
    task_id: TaskId


class Send(_Body):
    session_id: Agent
    subject: field_arg("send", "subject")
    body: field_arg("send", "body") = None
    to: field_arg("send", "to") = None
    group: field_arg("send", "group") = None
    capability: field_arg("send", "capability") = None
    all: bool = PydField(False, description="address: every live agent")
    priority: field_arg("send", "priority") = "normal"
    requires_ack: field_arg("send", "requires_ack") = False


class Ack(_Body):
    session_id: Agent
    message_id: field_arg("ack", "id")
    note: field_arg("ack", "note") = None


class Reserve(_Body):
    session_id: Agent
    paths: field_arg("reserve", "paths")
    shared: bool = PydField(False, description="shared instead of exclusive")
    ttl: field_arg("reserve", "ttl") = None
    wait_s: Annotated[float, PydField(ge=0.0, le=defaults.HTTP_WAIT_MAX_S, allow_inf_nan=False,
                                      description="seconds to queue for the paths when held")] = 0.0


class ReleasePaths(_Body):
    session_id: Agent
    paths: field_arg("release_paths", "paths") = None


#: the broadcast fields the query string may carry (the predecessor's form)
BROADCAST_QUERY = ("message", "session_id", "priority")


def broadcast_fields(body: Broadcast | None, query: Any, **given: str | None) -> Broadcast:
    """The broadcast from its body and its query string, checked as one body would be: an
    unknown query key, a field given twice with two values, or no message is a 422 naming it."""
    for key in query.keys():
        if key not in BROADCAST_QUERY:
            raise InvalidArgument(f"unknown query parameter '{key}' (the query may give "
                                  f"{', '.join(BROADCAST_QUERY)})", {"field": key})
    fields = body.model_dump(exclude_unset=True) if body is not None else {}
    for key, value in given.items():
        if value is None:
            continue
        if key in fields and fields[key] != value:
            raise InvalidArgument(f"'{key}' is given in the query and in the body, differently", {"field": key})
        fields[key] = value
    if not fields.get("message"):
        raise InvalidArgument("field 'message': required (in the body or as ?message=)", {"field": "message"})
    try:
        return Broadcast.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "message"
        raise InvalidArgument(f"field '{field}': {first.get('msg', 'invalid')}", {"field": field}) from None
