"""Messages: sending, addressing, assignment, reading, groups and retention.

Rules it keeps:

* A message is stored once, numbered from the counter ``msg`` (id ``msg-N``), with the
  recipients resolved when it was sent: the agent named by ``to`` (online or not: its copy
  waits), or every live agent of a ``group``, of a ``capability``, or ``all``. Each recipient
  gets an inbox entry (deliveries.py pushes, redelivers and acks them).
* A message to one agent never appears on PUB; one to a group, a capability or everyone is
  also the event ``message.sent``, so subscribers that were away replay it.
* ``assign`` claims the task on the agent's lease through the task claim path (one claim
  machinery) before it pushes; a queued assignment claims nothing until it is delivered.
* Reading changes nothing (``message_list``, ``message_get``); ``mark_read`` records it.
* Retention, per address (an agent's inbox, a group, a capability, everyone): the newest
  ``message_retention`` messages are kept, and settled messages older than
  ``message_max_age`` (swept at most once a second, with the next batch). Work is bounded
  per request and per sweep so trimming never stalls the loop; an open message (a requires_ack recipient not settled) is never trimmed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..protocol.fields import DEFAULT_MAX_DELIVER
from ..errors import BadRequest, Conflict, NotFound, RemoteError
from .context import Batch, Settings
from .deliveries import DEAD, PENDING, RANK, Deliveries, entry_view, parse_id, view
from .eventlog import EventLog, bump, counter
from .schema import (dead_key, dumps, inbox_key, loads, message_id, message_key, parse_inbox_key,
                     pending_key, stream_key)

if TYPE_CHECKING:
    from ..store.base import Txn
    from .agents import Agents
    from .tasks import Tasks

Handler = Callable[[Batch, dict[str, Any]], Any]
ASSIGN = "task.assign"
#: messages a send may trim from its address, and stream keys it may pass over, per request
TRIM_PER_SEND = 4
TRIM_SCAN = 64
#: settled messages past message_max_age the sweep trims, and keys it reads, per pass
SWEEP_TRIM = 256
SWEEP_EVERY_S = 1.0


def address_of(msg: dict[str, Any]) -> str:
    to = msg["to"]
    return "all" if to["kind"] == "all" else f"{to['kind']}:{to['name']}"


class Messages:
    """Send, assign, read, groups, retention."""

    def __init__(self, settings: Settings, log: EventLog, agents: "Agents", tasks: "Tasks",
                 deliveries: Deliveries) -> None:
        self.settings = settings
        self.log = log
        self.agents = agents
        self.tasks = tasks
        self.deliveries = deliveries
        deliveries.prepare = self._prepare
        self.next_sweep = 0.0

    def handlers(self) -> dict[str, Handler]:
        return {"send": self.send, "assign": self.assign, "message_list": self.message_list,
                "message_get": self.message_get, "mark_read": self.mark_read, "msgstats": self.msgstats,
                "group_join": self.group_join, "group_leave": self.group_leave}

    # ------------------------------------------------------------ sending
    @staticmethod
    def _address(body: dict[str, Any]) -> dict[str, Any]:
        given = [(k, body[k]) for k in ("to", "group", "capability") if body.get(k) is not None]
        if body.get("all"):
            given.append(("all", None))
        if len(given) != 1:
            raise BadRequest("give exactly one address: to, group, capability or all" +
                             (f" (got {', '.join(k for k, _ in given)})" if given else ""), {"field": "to"})
        kind, name = given[0]
        return {"kind": "agent" if kind == "to" else kind, "name": name}

    def _recipients(self, txn: Txn, to: dict[str, Any]) -> list[str]:
        kind, name = to["kind"], to["name"]
        if kind == "agent":
            return [name]
        out = []
        for record in self.agents.records(txn):
            if kind == "all" or (kind == "group" and name in record.get("groups", ())) or (
                    kind == "capability" and name in record["capabilities"]):
                out.append(record["id"])
        return out

    def store(self, b: Batch, body: dict[str, Any], to: dict[str, Any], recipients: list[str]) -> dict[str, Any]:
        """Store a message and give each recipient its copy; returns the record with
        ``online``: how many got it pushed at once."""
        number = bump(b, b"msg")
        expires_in = body.get("expires_in")
        msg = {"id": message_id(number), "n": number, "ts": b.now.wall, "from": body.get("from"), "to": to,
               "type": body.get("type", "message"), "category": body.get("category", "general"),
               "priority": body["priority"], "subject": body["subject"], "body": body.get("body"),
               "context": body.get("context") or {}, "tags": body.get("tags") or [],
               "requires_ack": bool(body.get("requires_ack")), "correlation_id": body.get("correlation_id"),
               "expires_at": None if expires_in is None else b.now.wall + expires_in,
               "ack_wait": body.get("ack_wait") or self.settings.ack_wait,
               "max_deliver": body.get("max_deliver", DEFAULT_MAX_DELIVER), "recipients": recipients,
               "open": len(recipients) if body.get("requires_ack") else 0}
        txn = b.txn
        txn.put("messages", message_key(number), dumps(msg))
        address = address_of(msg)
        txn.put("streams", stream_key(address, number), b"")
        bump(b, b"messages")
        bump(b, b"stream:" + address.encode())
        online = sum(self.deliveries.enqueue(b, agent, msg) for agent in recipients)
        self._trim_address(b, address)
        return {**msg, "online": online}

    def send(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        to = self._address(body)
        recipients = self._recipients(b.txn, to)
        msg = self.store(b, body, to, recipients)
        reply = {"id": msg["id"], "addressed": len(recipients), "online": msg["online"],
                 "queued": len(recipients) - msg["online"]}
        if to["kind"] != "agent":
            self.log.emit(b, "message.sent", {**view(msg), "addressed": len(recipients)})
        return reply | {"seq": counter(b, b"seq")}

    def assign(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        agent, task_id = body["agent"], body["task"]
        record = self.agents.get(b.txn, agent)
        connected = record is not None and agent in self.deliveries.routes
        message = {"from": body["from"], "priority": body["priority"], "type": ASSIGN,
                   "subject": body["subject"] or f"task {task_id}"}
        to = {"kind": "agent", "name": agent}
        if not connected:
            if not body["queue"]:
                if record is None:
                    raise NotFound(f"no live agent '{agent}' (not registered, or its lease lapsed); set queue "
                                   "(zmesh assign --queue) to leave the assignment in its inbox", {"agent": agent})
                raise Conflict(f"agent '{agent}' has a lease but no connection to push to; set queue (zmesh assign "
                               "--queue) to leave the assignment in its inbox", {"agent": agent})
            self.tasks.get(b.txn, task_id)  # not_found before anything is written
            msg = self.store(b, message | {"context": {"task": task_id, "queued": True, "ttl": body["ttl"]}},
                             to, [agent])
            return {"task": task_id, "agent": agent, "id": msg["id"], "queued": True, "token": None,
                    "lease": None, "expires_in": None}
        claim = self.tasks.claim(b, {"task": task_id, "agent": agent, "ttl": body["ttl"]})
        context = {"task": task_id, "queued": False, "token": claim["token"], "lease": claim["lease"],
                   "expires_in": claim["expires_in"], "task_record": self.tasks.view(b, self.tasks.get(b.txn, task_id))}
        msg = self.store(b, message | {"context": context}, to, [agent])
        return claim | {"id": msg["id"], "queued": False}

    def _prepare(self, b: Batch, agent: str, msg: dict[str, Any]) -> dict[str, Any] | None:
        """A queued assignment takes its claim when it is delivered; a refusal (the task
        went to someone else meanwhile) is delivered as such, with nothing held."""
        if msg["type"] != ASSIGN or not msg["context"].get("queued"):
            return None
        task_id = msg["context"]["task"]
        try:
            claim = self.tasks.claim(b, {"task": task_id, "agent": agent, "ttl": msg["context"].get("ttl")})
        except RemoteError as exc:
            return {"claimed": False, "error": exc.to_wire()}
        return {"claimed": True, "token": claim["token"], "lease": claim["lease"],
                "expires_in": claim["expires_in"], "task_record": self.tasks.view(b, self.tasks.get(b.txn, task_id))}

    # ------------------------------------------------------------ reading
    def _source(self, txn: Txn, body: dict[str, Any], back: bool) -> Iterator[tuple[int, str | None]]:
        """(message number, inbox agent) of the messages a read looks at, oldest first (or
        newest first when ``back``), numbered above ``since``."""
        since = body["since"]
        agent, group = body["agent"], body["group"]
        if agent is not None:
            table, prefix = "inbox", inbox_key(agent)
        elif group is not None:
            table, prefix = "streams", stream_key(f"group:{group}")
        else:
            table, prefix = "messages", b""
        keys = txn.scan_back(table, prefix) if back else txn.scan(table, prefix + message_key(since + 1)
                                                                   if since else prefix, prefix)
        for key, _ in keys:
            number = parse_inbox_key(key)[1] if table != "messages" else int.from_bytes(key, "big")
            if number <= since:
                if back:
                    return
                continue
            yield number, agent

    def message_list(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        if body["unread"] and body["agent"] is None:
            raise BadRequest("field 'unread' needs 'agent' (whose reading it is)", {"field": "unread"})
        if body["agent"] is not None and body["group"] is not None:
            raise BadRequest("give agent or group, not both", {"field": "group"})
        txn = b.txn
        tail = body["tail"]
        want = min(tail, body["limit"]) if tail else body["limit"]
        found: list[dict[str, Any]] = []
        more = False
        for number, agent in self._source(txn, body, back=bool(tail)):
            msg = self.deliveries.message(txn, number)
            entry = None if agent is None else self.deliveries.entry(txn, agent, number)
            if msg is None or (agent is not None and entry is None) or not self._match(msg, entry, body):
                continue
            if len(found) == want:
                more = not tail
                break
            item = view(msg)
            if entry is not None and agent is not None:
                item["delivery"] = entry_view(entry, self.deliveries.token(number, agent, txn))
            found.append(item)
        if tail:
            found.reverse()
        return {"messages": found, "more": more, "last": found[-1]["n"] if found else body["since"]}

    @staticmethod
    def _match(msg: dict[str, Any], entry: dict[str, Any] | None, body: dict[str, Any]) -> bool:
        return ((body["tag"] is None or body["tag"] in msg["tags"])
                and (body["priority"] is None or msg["priority"] == body["priority"])
                and (body["since_ts"] is None or msg["ts"] >= body["since_ts"])
                and (not body["unread"] or (entry is not None and entry["read_at"] is None)))

    def message_get(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        number = parse_id(body["id"])
        msg = self.deliveries.message(b.txn, number)
        if msg is None:
            raise NotFound(f"no message '{body['id']}' (never sent, or trimmed by retention)", {"id": body["id"]})
        recipients = []
        for agent in msg["recipients"]:
            entry = self.deliveries.entry(b.txn, agent, number)
            if entry is not None:
                recipients.append({"agent": agent, **entry_view(entry, self.deliveries.token(number, agent, b.txn))})
        return view(msg) | {"recipients": recipients, "open": msg["open"]}

    def mark_read(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        agent = body["agent"]
        marked, unknown = 0, []
        for message in body["ids"]:
            number = parse_id(message, "ids")
            entry = self.deliveries.entry(b.txn, agent, number)
            if entry is None:
                unknown.append(message)
            elif entry["read_at"] is None:
                entry["read_at"] = b.now.wall
                b.txn.put("inbox", inbox_key(agent, number), dumps(entry))
                marked += 1
        return {"agent": agent, "marked": marked, "unknown": unknown}

    def msgstats(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        first = next(b.txn.scan("messages"), None)
        return {**self.deliveries.stats(b), "messages": counter(b, b"messages"),
                "oldest": None if first is None else loads(first[1])["ts"],
                "retention": self.settings.message_retention, "max_age": self.settings.message_max_age}

    # ------------------------------------------------------------ groups
    def _group(self, b: Batch, body: dict[str, Any], join: bool) -> dict[str, Any]:
        agent = body["agent"]
        record = self.agents.get(b.txn, agent)
        if record is None:
            raise NotFound(f"no agent '{agent}'", {"agent": agent})
        groups = [g for g in record.get("groups", []) if g != body["group"]]
        if join:
            groups.append(body["group"])
        record["groups"] = sorted(groups)
        self.agents.put(b, record)
        return {"agent": agent, "groups": record["groups"]}

    def group_join(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        return self._group(b, body, True)

    def group_leave(self, b: Batch, body: dict[str, Any]) -> dict[str, Any]:
        return self._group(b, body, False)

    # ------------------------------------------------------------ retention
    def trim(self, b: Batch, msg: dict[str, Any]) -> None:
        """Forget a message and every copy of it."""
        txn, number = b.txn, msg["n"]
        for agent in msg["recipients"]:
            entry = self.deliveries.entry(txn, agent, number)
            if entry is None:
                continue
            if entry["state"] == PENDING:
                txn.delete("pending", pending_key(agent, _rank(msg), number))
                bump(b, b"pending:" + msg["priority"].encode(), -1)
            elif entry["state"] == DEAD:
                txn.delete("dead_letters", dead_key(number, agent))
                bump(b, b"dead", -1)
            txn.delete("inbox", inbox_key(agent, number))
        address = address_of(msg)
        txn.delete("streams", stream_key(address, number))
        txn.delete("messages", message_key(number))
        bump(b, b"messages", -1)
        bump(b, b"stream:" + address.encode(), -1)

    def _trim_address(self, b: Batch, address: str) -> None:
        excess = counter(b, b"stream:" + address.encode()) - self.settings.message_retention
        if excess <= 0:
            return
        doomed: list[dict[str, Any]] = []
        for seen, (key, _) in enumerate(b.txn.scan("streams", prefix=stream_key(address))):
            if seen == TRIM_SCAN or len(doomed) == min(excess, TRIM_PER_SEND):
                break
            msg = self.deliveries.message(b.txn, int.from_bytes(bytes(key)[-8:], "big"))
            if msg is not None and msg["open"] == 0:
                doomed.append(msg)
        for msg in doomed:
            self.trim(b, msg)

    def sweep(self, b: Batch) -> int:
        """Trim settled messages older than message_max_age, oldest first, a bounded number
        per pass; returns how many."""
        self.next_sweep = b.now.mono + SWEEP_EVERY_S
        cutoff = b.now.wall - self.settings.message_max_age
        doomed = []
        for seen, (_, raw) in enumerate(b.txn.scan("messages")):
            msg = loads(raw)
            if seen == SWEEP_TRIM or msg["ts"] >= cutoff:
                break
            if msg["open"] == 0:
                doomed.append(msg)
        for msg in doomed:
            self.trim(b, msg)
        return len(doomed)


def _rank(msg: dict[str, Any]) -> int:
    return RANK[msg["priority"]]
