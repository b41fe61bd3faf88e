"""The message ops of the wire protocol (protocol.OPS includes them) and their topics.

Rules it keeps:

* What travels is stated once, here and in protocol.py: the broker validates requests
  with these fields, the clients check arguments with them, the CLI builds its options
  from them and docs/PROTOCOL.md is generated from them.
* A message names exactly one address (``to``, ``group``, ``capability`` or ``all``);
  which one and how recipients are resolved is core/messages.py's business.
"""

from __future__ import annotations

from ..fields import (
    DEFAULT_MAX_DELIVER,
    MAX_DELIVER,
    MAX_INT,
    MAX_LIST_LIMIT,
    MAX_MESSAGE_DATA_BYTES,
    MAX_TTL_S,
    MIN_TTL_S,
    PRIORITIES,
    Field,
    Op,
)

_AGENT = Field("agent", "id", True, doc="agent id")
_ID = Field("id", "id", True, doc="message id (`msg-N`)")
_PRIORITY = Field("priority", "choice", default="normal", doc="one of " + ", ".join(PRIORITIES),
                  choices=PRIORITIES)
_LIMIT = Field("limit", "int", default=1000, lo=1, hi=MAX_LIST_LIMIT)
_MESSAGE = "{id, n, ts, from, to: {kind, name}, type, category, priority, subject, body, context, " \
           "tags, requires_ack, correlation_id, expires_at, ack_wait, max_deliver}"

MESSAGE_OPS: tuple[Op, ...] = (
    Op(
        "send",
        "Send a structured message to one agent (`to`), every live member of a `group`, every "
        "live agent with a `capability`, or every live agent (`all`): exactly one of them. It "
        "is stored, then pushed over the ROUTER to each recipient's own connection (never over "
        "PUB); a recipient that is offline gets it when it connects, in priority then arrival "
        "order. A `requires_ack` delivery is held like a claim on the recipient's lease: not "
        "acked within `ack_wait`, or when the agent reconnects, it is delivered again (with a "
        "new token); after `max_deliver` deliveries it goes to the dead letters. A message to a "
        "group, a capability or everyone is also the event `message.sent`.",
        (
            Field("from", "id", doc="the sender: an agent id, where replies go"),
            Field("to", "id", doc="address: one agent (it need not be online)"),
            Field("group", "name", doc="address: every live member of this group"),
            Field("capability", "name", doc="address: every live agent with this capability"),
            Field("all", "bool", default=False, doc="address: every live agent"),
            Field("subject", "name", True, doc="one line"),
            Field("body", "payload", default=None,
                  doc=f"any JSON value, up to {MAX_MESSAGE_DATA_BYTES} bytes encoded"),
            _PRIORITY,
            Field("type", "name", default="message", doc="free type (`request` and `reply` pair up by correlation_id)"),
            Field("category", "name", default="general", doc="free category"),
            Field("context", "object", default={}, doc="free JSON object"),
            Field("tags", "namelist", default=[], doc="tags to read by"),
            Field("requires_ack", "bool", default=False, doc="hold each delivery until acked"),
            Field("correlation_id", "id", doc="ties a reply to its request"),
            Field("expires_in", "ttl", doc="seconds until the message expires undelivered",
                  lo=MIN_TTL_S, hi=MAX_TTL_S),
            Field("ack_wait", "ttl", doc="seconds a requires_ack delivery waits for its ack "
                  "(default: the broker's)", lo=MIN_TTL_S, hi=MAX_TTL_S),
            Field("max_deliver", "int", default=DEFAULT_MAX_DELIVER,
                  doc="deliveries before a requires_ack message is a dead letter", lo=1, hi=MAX_DELIVER),
        ),
        writes=True,
        returns="{id, addressed, online, queued, seq}",
        errors=("bad_request", "too_large"),
    ),
    Op(
        "assign",
        "Give a task to one agent: the broker claims it on that agent's lease (a fencing token, "
        "as claim gives) and pushes it as a `task.assign` message (context: task, token, lease, "
        "task_record) to the agent's connection. An agent with no live lease is not_found; one "
        "that is not connected is refused with conflict, unless `queue`: then the assignment "
        "waits in its inbox and the task is claimed only when it is delivered (never held "
        "meanwhile).",
        (
            _AGENT,
            Field("task", "id", True, doc="task id"),
            Field("ttl", "ttl", doc="claim TTL in seconds", lo=MIN_TTL_S, hi=MAX_TTL_S),
            Field("queue", "bool", default=False, doc="wait in the inbox of an agent that is not connected"),
            Field("from", "id", doc="who assigns"),
            Field("priority", "choice", default="high", doc="one of " + ", ".join(PRIORITIES),
                  choices=PRIORITIES),
            Field("subject", "name", doc="default: `task <id>`"),
        ),
        writes=True,
        returns="{task, agent, id, queued, token, lease, expires_in}",
        errors=("not_found", "conflict"),
    ),
    Op(
        "ack",
        "Acknowledge a message as its recipient `agent` (with a note). When `token` is given it "
        "must be the current delivery's: an ack of an earlier delivery is refused with "
        "stale_token. Acking again answers the first ack.",
        (_AGENT, _ID, Field("token", "int", doc="the delivery token from the push", lo=1, hi=MAX_INT),
         Field("note", "text", doc="free note kept with the ack")),
        writes=True,
        returns="{id, agent, acked_at, note, already}",
        errors=("not_found", "stale_token"),
    ),
    Op(
        "message_list",
        "Stored messages, oldest first: `agent`'s inbox (with its delivery, read and ack state), "
        "those sent to a `group`, or all. Filters: tag, priority, since (a message number or, "
        "with since_ts, a time), unread (needs agent); `tail` keeps the last N matches. Reading "
        "changes nothing: mark_read does.",
        (
            Field("agent", "id", doc="whose inbox"),
            Field("group", "name", doc="messages sent to this group"),
            Field("tag", "name", doc="only messages with this tag"),
            Field("priority", "choice", doc="only this priority", choices=PRIORITIES),
            Field("since", "int", default=0, doc="only messages numbered above this", lo=0, hi=MAX_INT),
            Field("since_ts", "number", doc="only messages sent at or after this time (seconds since the epoch)",
                  lo=0, hi=1e12),
            Field("unread", "bool", default=False, doc="only messages the agent has not read"),
            Field("tail", "int", doc="only the last N matches", lo=1, hi=MAX_LIST_LIMIT),
            _LIMIT,
        ),
        returns="{messages: [message + delivery state], more, last}",
        errors=("bad_request",),
    ),
    Op("message_get", "One message with every recipient's delivery, read and ack state.", (_ID,),
       returns=_MESSAGE + " + {recipients: [{agent, state, deliveries, delivered_at, read_at, acked_at, note}]}",
       errors=("not_found",)),
    Op(
        "mark_read",
        "Mark messages in `agent`'s inbox read (reading is separate from delivery and ack).",
        (_AGENT, Field("ids", "idlist", True, doc="message ids")),
        writes=True,
        returns="{agent, marked}",
    ),
    Op(
        "unacked",
        "requires_ack deliveries not acked yet: outstanding ones (with their token and ack "
        "deadline) and pending ones, oldest first.",
        (Field("agent", "id", doc="only this recipient"), _LIMIT),
        returns="{deliveries: [{id, agent, state, deliveries, token, expires_in, subject, priority}], more}",
    ),
    Op(
        "dead_letters",
        "Deliveries that reached max_deliver without an ack, oldest first.",
        (Field("agent", "id", doc="only this recipient"), _LIMIT),
        returns="{dead: [{id, agent, deliveries, dead_at, subject, priority, from}], more}",
    ),
    Op(
        "requeue",
        "Deliver dead letters again from their first attempt: one recipient's (`agent`) or every "
        "dead recipient of the message.",
        (_ID, Field("agent", "id", doc="only this recipient")),
        writes=True,
        returns="{id, requeued: [agent ids]}",
        errors=("not_found", "forbidden"),
        admin=True,
    ),
    Op("msgstats", "Message counts: pending per priority, outstanding acks, dead letters, "
       "messages stored; the broker adds delivery latency p50/p95 per priority.", (),
       returns="{pending: {priority: n}, outstanding, dead, messages, latency_ms: {priority: {p50, p95, n}}}"),
    Op("group_join", "Add a live agent to a group.",
       (_AGENT, Field("group", "name", True, doc="group name")), writes=True,
       returns="{agent, groups}", errors=("not_found",)),
    Op("group_leave", "Take a live agent out of a group.",
       (_AGENT, Field("group", "name", True, doc="group name")), writes=True,
       returns="{agent, groups}", errors=("not_found",)),
)

MESSAGE_TOPICS: dict[str, str] = {
    "message.sent": "a message to a group, a capability or everyone (the message and how many it was addressed to)",
    "message.acked": "a recipient acked a message (id, agent, from; no body)",
    "message.dead": "a requires_ack delivery reached max_deliver unacked (id, agent, deliveries)",
    "message.requeued": "dead letters were queued for delivery again (id, agents)",
}
