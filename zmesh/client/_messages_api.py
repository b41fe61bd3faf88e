"""The message ops of the public client API, defined once for both drivers (Api includes them).

Rules: as _api.py's. A method turns its arguments into one request body (checked by the
broker's own validation before it is sent); ``read`` (list, then mark read) is a flow. The
sender of a message is the client's agent unless ``sender`` is given.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import InvalidArgument
from ..protocol.records import (
    Acked,
    Assignment,
    DeadLetter,
    Groups,
    Marked,
    MessageDetail,
    MessagePage,
    MessageStats,
    Requeued,
    Sent,
    StoredMessage,
    Unacked,
)
from ._checks import names
from ._dual import op
from ._flows import DriverHooks, Flow, Invoke
from ._inbox import Message
from ._protocol import Call, _identity


def _names(field: str, value: Any) -> list[str]:
    return names(field, value) or []


def _messages(body: MessagePage) -> list[StoredMessage]:
    return body["messages"]


def message_ref(message: Message | str) -> tuple[str, int | None, str | None]:
    """(id, token, recipient) of a Message, or (id, None, None) of an id."""
    if isinstance(message, Message):
        return message.id, message.token, message.agent or None
    if not isinstance(message, str):
        raise InvalidArgument(f"message must be a Message or a message id, not {type(message).__name__}",
                              {"field": "id"})
    return message, None, None


def read_flow(api: MessagesApi, peek: bool, filters: dict[str, Any]) -> Flow[list[StoredMessage]]:
    """This agent's messages, then (unless ``peek``) marked read."""
    filters.setdefault("agent", api._agent(None))
    found: list[StoredMessage] = yield Invoke(api.messages, (), filters)
    if not peek and found:
        yield Invoke(api.mark_read, ([m["id"] for m in found],), {"agent": filters["agent"]})
    return found


class MessagesApi(DriverHooks):
    """send, assign, ack, read and the dead letters."""

    def _send_call(self, subject: str, body: Any, to: str | None, group: str | None, capability: str | None,
                   all: bool, priority: str, type: str, category: str, context: dict[str, Any] | None,
                   tags: Iterable[str], requires_ack: bool, correlation_id: str | None, expires_in: float | None,
                   ack_wait: float | None, max_deliver: int, sender: str | None) -> Call[Any]:
        return Call("send", {"from": sender if sender is not None else self.agent, "to": to, "group": group,
                             "capability": capability, "all": all, "subject": subject, "body": body,
                             "priority": priority, "type": type, "category": category,
                             "context": {} if context is None else context, "tags": _names("tags", tags),
                             "requires_ack": requires_ack, "correlation_id": correlation_id,
                             "expires_in": expires_in, "ack_wait": ack_wait, "max_deliver": max_deliver},
                    _identity)

    @op
    def send(self, subject: str, body: Any = None, *, to: str | None = None, group: str | None = None,
             capability: str | None = None, all: bool = False, priority: str = "normal", type: str = "message",
             category: str = "general", context: dict[str, Any] | None = None, tags: Iterable[str] = (),
             requires_ack: bool = False, correlation_id: str | None = None, expires_in: float | None = None,
             ack_wait: float | None = None, max_deliver: int = 5, sender: str | None = None) -> Sent:
        """Send a message to one agent (``to``), a ``group``, a ``capability`` or ``all``
        (exactly one). Returns ``{id, addressed, online, queued, seq}``: how many live agents
        it was addressed to and how many had it pushed at once (the rest get it when they
        connect)."""
        return self._call(self._send_call(subject, body, to, group, capability, all, priority, type, category,
                                          context, tags, requires_ack, correlation_id, expires_in, ack_wait,
                                          max_deliver, sender))

    @op
    def broadcast(self, subject: str, body: Any = None, **options: Any) -> Sent:
        """``send`` to every live agent; the answer says how many it was addressed to."""
        return self.send(subject, body, all=True, **options)

    @op
    def reply(self, message: Message, body: Any = None, *, subject: str | None = None,
              priority: str | None = None) -> Sent:
        """Answer a message (a ``request``): sent to its sender with its correlation id."""
        if not isinstance(message, Message):
            raise InvalidArgument("reply needs the Message it answers", {"field": "message"})
        if message.sender is None:
            raise InvalidArgument(f"message {message.id} names no sender to reply to", {"field": "message"})
        return self.send(subject or f"re: {message.subject}"[:256], body, to=message.sender, type="reply",
                         correlation_id=message.correlation_id or message.id,
                         priority=priority or message.priority)

    @op
    def notify_task(self, task: str, subject: str, body: Any = None, **options: Any) -> Sent:
        """Stream a notification about ``task`` to every receiver watching it (watch_task)."""
        context = dict(options.pop("context", None) or {}, task=task)
        return self.send(subject, body, group=f"task:{task}", context=context, **options)

    @op
    def assign(self, agent: str, task: str, *, ttl: float | None = None, queue: bool = False,
               priority: str = "high", subject: str | None = None) -> Assignment:
        """Claim ``task`` on ``agent``'s lease and push it to the agent's task callbacks.
        Returns the claim (token included) and the message id; with ``queue`` an agent that
        is not connected gets it (and the claim) when it connects."""
        return self._call(Call("assign", {"agent": agent, "task": task, "ttl": ttl, "queue": queue,
                                          "priority": priority, "subject": subject, "from": self.agent},
                               _identity))

    @op
    def ack(self, message: Message | str, *, note: str | None = None, token: int | None = None,
            agent: str | None = None) -> Acked:
        """Acknowledge a message (a Message carries its delivery token: an ack of a delivery
        that was superseded is refused with stale_token)."""
        mid, mtoken, recipient = message_ref(message)
        return self._call(Call("ack", {"agent": self._agent(agent or recipient), "id": mid,
                                       "token": token if token is not None else mtoken, "note": note}, _identity))

    def _list_body(self, agent: str | None, group: str | None, tag: str | None, priority: str | None,
                   since: int, since_ts: float | None, unread: bool, tail: int | None, limit: int) -> dict[str, Any]:
        return {"agent": agent, "group": group, "tag": tag, "priority": priority, "since": since,
                "since_ts": since_ts, "unread": unread, "tail": tail, "limit": limit}

    @op
    def message_page(self, *, agent: str | None = None, group: str | None = None, tag: str | None = None,
                     priority: str | None = None, since: int = 0, since_ts: float | None = None,
                     unread: bool = False, tail: int | None = None, limit: int = 1000) -> MessagePage:
        """One page of stored messages (``{messages, more, last}``); reading changes nothing."""
        return self._call(Call("message_list", self._list_body(agent, group, tag, priority, since, since_ts,
                                                               unread, tail, limit), _identity))

    @op
    def messages(self, *, agent: str | None = None, group: str | None = None, tag: str | None = None,
                 priority: str | None = None, since: int = 0, since_ts: float | None = None,
                 unread: bool = False, tail: int | None = None, limit: int = 1000) -> list[StoredMessage]:
        """Stored messages (an agent's inbox with delivery state, a group's, or all), oldest
        first; a peek: nothing is marked read (mark_read does)."""
        return self._call(Call("message_list", self._list_body(agent, group, tag, priority, since, since_ts,
                                                               unread, tail, limit), _messages))

    @op
    def message(self, message: Message | str) -> MessageDetail:
        """One message with every recipient's delivery, read and ack state."""
        return self._call(Call("message_get", {"id": message_ref(message)[0]}, _identity))

    @op
    def mark_read(self, messages: Iterable[Message | str], *, agent: str | None = None) -> Marked:
        if isinstance(messages, (str, Message)):
            messages = [messages]
        try:
            refs = list(messages)
        except TypeError:
            raise InvalidArgument(f"messages must be message ids or Messages, not {type(messages).__name__}",
                                  {"field": "ids"}) from None
        ids = [message_ref(m)[0] for m in refs]
        return self._call(Call("mark_read", {"agent": self._agent(agent), "ids": ids}, _identity))

    @op
    def unacked(self, *, agent: str | None = None, limit: int = 1000) -> list[Unacked]:
        return self._call(Call("unacked", {"agent": agent, "limit": limit}, lambda b: b["deliveries"]))

    @op
    def dead_letters(self, *, agent: str | None = None, limit: int = 1000) -> list[DeadLetter]:
        return self._call(Call("dead_letters", {"agent": agent, "limit": limit}, lambda b: b["dead"]))

    @op
    def requeue(self, message: Message | str, *, agent: str | None = None) -> Requeued:
        return self._call(Call("requeue", {"id": message_ref(message)[0], "agent": agent}, _identity))

    @op
    def msgstats(self) -> MessageStats:
        return self._call(Call("msgstats", {}, _identity))

    @op
    def join(self, group: str, *, agent: str | None = None) -> Groups:
        """Become a member of ``group`` (messages to it reach its live members)."""
        return self._call(Call("group_join", {"agent": self._agent(agent), "group": group}, _identity))

    @op
    def leave(self, group: str, *, agent: str | None = None) -> Groups:
        return self._call(Call("group_leave", {"agent": self._agent(agent), "group": group}, _identity))

    @op
    def read(self, *, peek: bool = False, **filters: Any) -> list[StoredMessage]:
        """This agent's messages (filters as ``messages``), marked read unless ``peek``."""
        return self._flow(read_flow(self, peek, filters))
