"""The shapes of what the broker answers: one ``TypedDict`` per record and per reply body.

Rules this module keeps:

* It states shapes, it does not make values: a reply stays the plain ``dict`` the codec
  decoded (``client.task("x")["status"]`` works as it always did); these types only tell a
  type checker, and a reader, which keys the dict has and what they hold.
* One source of truth for the client's return types: ``zmesh.Client`` and
  ``zmesh.AsyncClient`` annotate their results with these names, and ``REPLIES`` maps every
  op of ``protocol.OPS`` to the type of its reply body.
* A key is *required* when every reply of that kind carries it (its value may be None: the
  broker sends ``"owner": null`` rather than leaving the key out). The few keys that only
  some replies carry are declared in a ``total=False`` subclass (Python 3.10 has no
  ``NotRequired``): a task history entry's ``error``/``attempts``, an inbox message's
  ``delivery``, a claim reply's ``task_record``.
* tests/test_records.py asks a real broker every op and checks each reply has exactly the
  keys its type declares, nested records included, so the types cannot drift from the wire.

The messaging and path-reservation shapes are in records_messages.py (split by resource),
re-exported here: ``zmesh.protocol.records`` names every reply shape.

No I/O and no behaviour: only ``typing``.
"""

from __future__ import annotations

from typing import Any, TypedDict

# the messaging and reservation shapes live beside these, re-exported here
from .records_messages import (Acked, Address, Assignment, DeadLetter, DeadLetterPage, Delivery, Grant,
                               Groups, Latency, Marked, MessageDetail, MessagePage, MessageStats,
                               PushDelivery, PushedMessage, Recipient, ReleasedPaths, Requeued, Reservation,
                               ReservationState, Reserved, Sent, StoredMessage, Unacked, UnackedPage,
                               WaitingReserve)

__all__ = [
    "REPLIES",
    "Acked",
    "Address",
    "AdminReleased",
    "Agent",
    "AgentList",
    "Assignment",
    "AuditPage",
    "AuditRecord",
    "Backup",
    "BackupKeys",
    "Blocker",
    "BlockerPage",
    "BlockerRaised",
    "ClaimGrant",
    "DeadLetter",
    "DeadLetterPage",
    "Delivery",
    "Grant",
    "Groups",
    "Health",
    "HealthThresholds",
    "Hello",
    "Helper",
    "Helpers",
    "Kept",
    "Latency",
    "Lease",
    "Marked",
    "MessageDetail",
    "MessagePage",
    "MessageStats",
    "Presence",
    "Published",
    "Purged",
    "PushDelivery",
    "PushedMessage",
    "Recipient",
    "ReleasedPaths",
    "Replay",
    "Requeued",
    "Reservation",
    "ReservationState",
    "Reserved",
    "Sent",
    "Snapshot",
    "Status",
    "StoredMessage",
    "Task",
    "TaskHistoryEntry",
    "TaskPage",
    "Unacked",
    "UnackedPage",
    "Unregistered",
    "WaitingReserve",
    "WireEvent",
]


# ---------------------------------------------------------------------------- the broker
class Hello(TypedDict):
    """``hello``: who the broker is and where its events are published."""

    broker_id: str
    protocol: int
    version: str
    #: the ROUTER endpoints it serves requests on, and its PUB endpoints
    endpoints: list[str]
    pub: list[str]
    durability: str
    #: the lease TTL (seconds) an agent gets when it names none
    default_ttl: float
    #: the latest event's sequence number
    seq: int


class Status(TypedDict):
    """``status``: the broker's summary (the core's counts and the loop's own figures)."""

    tasks: dict[str, int]
    agents: int
    claims: int
    states: dict[str, int]
    evasive: int
    idle_queue: list[str]
    blockers: int
    seq: int
    #: the last fencing token handed out
    token: int
    broker_id: str
    version: str
    pid: int
    durability: str
    uptime: float
    endpoints: list[str]
    pub: list[str]
    data: str
    batches: int
    requests: int


class HealthThresholds(TypedDict):
    map_use: float
    commit_p95_ms: float
    disk_free_bytes: int
    disk_free_ratio: float


class Health(TypedDict):
    """``health``: ``healthy`` false with one line per reason when a check failed."""

    healthy: bool
    reasons: list[str]
    broker_id: str
    version: str
    uptime: float
    seq: int
    store_bytes: int
    used_bytes: int
    map_size: int
    map_use: float
    commit_p95_ms: float | None
    commits: int
    disk_free_bytes: int | None
    disk_size_bytes: int | None
    disk_free_ratio: float | None
    thresholds: HealthThresholds


class Published(TypedDict):
    """``publish``: the event it became."""

    topic: str
    seq: int


# ---------------------------------------------------------------------------- agents and leases
class Lease(TypedDict):
    """``register`` and ``heartbeat``: the agent's lease."""

    agent: str
    lease: int
    ttl: float


class Unregistered(TypedDict):
    """``unregister``: the task claims released with the lease."""

    agent: str
    released: list[str]


class Agent(TypedDict):
    """An agent as clients see it (``agent_get``, ``agent_list``, ``snapshot``): its
    registration, presence, liveness, lease, stats and the claims it holds."""

    id: str
    capabilities: list[str]
    groups: list[str]
    metadata: dict[str, Any]
    ttl: float
    lease: int
    registered: float
    #: made by a claim or report of an unregistered agent, not by register
    implicit: bool
    completed: int
    failed: int
    state: str
    since: float | None
    task: str | None
    last_task: str | None
    reason: str | None
    message: str | None
    cost: float
    blocker: str | None
    #: the CurveZMQ public key the agent belongs to (None with security off)
    key: str | None
    #: place in the idle queue (1: waiting longest); None when not idle
    position: int | None
    liveness: str
    expires_in: float | None
    waiting_since: float | None
    uptime: float
    #: the resources it holds claims on (task ids, reservation patterns, deliveries)
    claims: list[str]


class AgentList(TypedDict):
    """``agent_list``."""

    agents: list[Agent]
    idle_queue: list[str]
    seq: int


class Helper(TypedDict):
    """An idle, alive agent covering enough of the capabilities asked for."""

    agent: str
    cover: float
    matched: list[str]
    missing: list[str]
    position: int
    waiting_since: float | None
    capabilities: list[str]


class Helpers(TypedDict):
    """``helpers``."""

    helpers: list[Helper]
    seq: int


class Presence(TypedDict):
    """``report``: the agent's state after it; ``helpers`` only for ``help`` (else None)."""

    agent: str
    state: str
    position: int | None
    helpers: list[Helper] | None
    seq: int


# ---------------------------------------------------------------------------- tasks
class _HistoryEntry(TypedDict):
    ts: float
    #: how a claim ended (released, failed, lease_expired, claim_expired, unregistered,
    #: admin_released) or ``requeued``
    event: str
    agent: str | None
    token: int | None


class TaskHistoryEntry(_HistoryEntry, total=False):
    """One entry of a task's history; ``error`` for a failure, ``attempts`` for a requeue."""

    error: str
    attempts: int


class Task(TypedDict):
    """A task as clients see it: the record and its current claim (``owner``, ``token``,
    ``expires_in``: None unless claimed)."""

    id: str
    type: str
    data: Any
    priority: int
    requires: list[str]
    max_attempts: int
    depends_on: list[str]
    status: str
    attempts: int
    claims: int
    created: float
    updated: float
    result: Any
    history: list[TaskHistoryEntry]
    owner: str | None
    token: int | None
    expires_in: float | None
    completed_by: str | None
    completed_token: int | None


class TaskPage(TypedDict):
    """``task_list``: one page; ``more`` when another follows (pass the last id as after)."""

    tasks: list[Task]
    more: bool
    seq: int


class _ClaimGrant(TypedDict):
    task: str
    agent: str
    token: int
    lease: int
    #: seconds until the claim lapses unless renewed; None: as long as the lease
    expires_in: float | None


class ClaimGrant(_ClaimGrant, total=False):
    """``claim``, ``claim_next``, ``renew``: the claim granted (the client makes a
    :class:`zmesh.Claim` of it); ``task_record`` with claim_next only."""

    task_record: Task


class Snapshot(TypedDict):
    """``snapshot``: everything a coordinator starts from, at one ``seq``."""

    agents: list[Agent]
    idle_queue: list[str]
    blockers: list[Blocker]
    tasks: dict[str, int]
    seq: int


# ---------------------------------------------------------------------------- blockers
class Blocker(TypedDict):
    """A blocker: open until resolved (``resolved``, ``resolved_by``, ``resolution`` then)."""

    id: str
    agent: str | None
    type: str
    description: str
    severity: str
    requires: list[str]
    task: str | None
    status: str
    raised: float
    resolved: float | None
    resolved_by: str | None
    resolution: str | None


class BlockerRaised(TypedDict):
    """``blocker_raise``."""

    blocker: Blocker
    helpers: list[Helper]
    seq: int


class BlockerPage(TypedDict):
    """``blocker_list``."""

    blockers: list[Blocker]
    more: bool
    seq: int


# ---------------------------------------------------------------------------- events
class WireEvent(TypedDict):
    """An event as ``replay`` returns it (the client makes a ``protocol.Event`` of it)."""

    topic: str
    seq: int
    body: dict[str, Any]


class Replay(TypedDict):
    """``replay``: events after ``since``, oldest first."""

    events: list[WireEvent]
    last_seq: int
    more: bool


# ---------------------------------------------------------------------------- admin and audit
class AdminReleased(TypedDict):
    """``admin_release``: the task released (None when an agent's lease was ended), whose
    claim it was, and every resource released."""

    task: str | None
    agent: str
    released: list[str]


class Kept(TypedDict):
    task: str
    reason: str


class Purged(TypedDict):
    """``admin_purge``."""

    purged: list[str]
    kept: list[Kept]
    more: bool


class BackupKeys(TypedDict):
    #: where the broker's key pair was copied (None: it has none)
    broker_key: str | None
    #: how many allow-listed public keys were copied
    authorized: int


class Backup(TypedDict):
    """``backup``: where the copy is, its size and time, and the seq it holds."""

    dest: str
    bytes: int
    seconds: float
    broker_id: str
    seq: int
    keys: BackupKeys | None


class AuditRecord(TypedDict):
    """One operation the broker recorded."""

    id: int
    ts: float
    op: str
    agent: str | None
    task: str | None
    result: str
    seq: int | None
    key: str | None
    role: str | None


class AuditPage(TypedDict):
    """``audit``: newest first; ``next`` is the ``before`` of the following page (None: none)."""

    records: list[AuditRecord]
    next: int | None


#: every op's reply body (None: the op may answer null)
REPLIES: dict[str, Any] = {
    "hello": Hello, "register": Lease, "heartbeat": Lease, "unregister": Unregistered,
    "task_create": Task, "claim": ClaimGrant, "claim_next": ClaimGrant | None, "complete": Task,
    "fail": Task, "release": Task, "renew": ClaimGrant, "publish": Published, "task_get": Task,
    "task_list": TaskPage, "task_next": Task | None, "report": Presence, "agent_get": Agent, "helpers": Helpers,
    "blocker_raise": BlockerRaised, "blocker_resolve": Blocker, "blocker_list": BlockerPage,
    "snapshot": Snapshot, "agent_list": AgentList, "status": Status, "health": Health, "replay": Replay,
    "send": Sent, "assign": Assignment, "ack": Acked, "message_list": MessagePage,
    "message_get": MessageDetail, "mark_read": Marked, "unacked": UnackedPage,
    "dead_letters": DeadLetterPage, "requeue": Requeued, "msgstats": MessageStats,
    "group_join": Groups, "group_leave": Groups, "reserve": Reserved, "release_paths": ReleasedPaths,
    "reservations": ReservationState, "admin_release": AdminReleased, "admin_purge": Purged,
    "admin_requeue": Task, "backup": Backup, "audit": AuditPage,
}
