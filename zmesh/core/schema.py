"""The stored layout: every table, its fixed key-prefix byte, and the keys and records in it.

Rules it keeps:

* Every table has a prefix byte written here next to its name. A prefix never depends on a
  table's place in a list, and a prefix once used is never given to another table (data on
  disk is read by it). A new table takes a new byte.
* A nested table (:data:`NESTED`) lives inside another table's key range, under a
  sub-prefix past every key of its own: the audit trail sits right after the counters in
  the events range, newest record first, so a write's audit record lands on the leaf page
  its event and the counters already dirty (one page less per synced commit than a table
  of its own). A scan of the outer table ends where the nested one begins (store.py).
* Keys are built and parsed only here, so the byte layout of a key is stated once.
* Ids never hold NUL (protocol refuses control characters), so NUL separates key parts.
* Integers in keys are big-endian, so byte order is numeric order.
* Records are JSON (orjson): readable with ``mdb_dump`` and any JSON tool.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

#: table -> key prefix byte in the LMDB layout (schema 4: one tree, no named databases)
TABLES: dict[str, int] = {
    "meta": 0x10,        # b"schema", b"broker_id", b"claim_index" (left by a clean shutdown), b"journal_seq"
    "tasks": 0x11,       # task id -> task record; task id + NUL -> its claim record
    "claims": 0x12,      # resource key -> claim record, for kinds without a slot of their own
    "agents": 0x13,      # agent id -> agent record
    "ready": 0x14,       # claim_next order: inverted priority (4), order (8), id -> b""
    "waiting_on": 0x15,  # dependency id NUL waiting task id -> b""
    "by_status": 0x16,   # status NUL task id -> b"" (waiting, completed, dead)
    "events": 0x17,      # seq (8 bytes BE) -> [topic, body]; COUNTER + name -> counter (8 bytes)
    "blockers": 0x18,    # blocker number (8 bytes BE) -> blocker record
    "open_blockers": 0x19,  # blocker number (8 bytes BE) -> b"" while it is open
    "messages": 0x1A,    # message number (8 bytes BE) -> message record
    "inbox": 0x1B,       # agent NUL message number -> that recipient's delivery record
    "pending": 0x1C,     # agent NUL priority rank (1) message number -> b"": awaiting delivery
    "streams": 0x1D,     # address NUL message number -> b"": messages by address (reads, retention)
    "dead_letters": 0x1E,  # message number agent -> b"": deliveries that reached max_deliver
    # 0x1F: retired (the audit trail's first layout, in no release); never reuse it
}
assert len(set(TABLES.values())) == len(TABLES), "two tables share a prefix byte"

U64 = struct.Struct(">Q")
U32 = struct.Struct(">I")

# ---------------------------------------------------------------- events and counters
#: counters sit after every 8-byte seq in the events table, so the newest events and the
#: counters share a leaf page: a write dirties one page less than with a table of their own
COUNTER = b"\xff"

#: nested table -> (the table whose range holds it, its sub-prefix there): the sub-prefix
#: sorts after every other key of that table (COUNTER + a counter's ASCII name included)
NESTED: dict[str, tuple[str, bytes]] = {
    # added in schema 4 without a new version: older code never reads these keys
    "audit": ("events", COUNTER + b"\xff"),  # audit id, descending (8 bytes) -> audit record
}
#: every table's whole key prefix in the one LMDB tree
PREFIXES: dict[str, bytes] = {name: bytes((prefix,)) for name, prefix in TABLES.items()}
PREFIXES.update({name: PREFIXES[outer] + sub for name, (outer, sub) in NESTED.items()})
#: every table, top-level and nested (what a store holds)
TABLE_NAMES: tuple[str, ...] = tuple(PREFIXES)

# ---------------------------------------------------------------- meta
SCHEMA = b"schema"
BROKER_ID = b"broker_id"
#: the resource keys claimed at a clean shutdown, NUL-separated (claims.Claims.checkpoint)
CLAIM_INDEX = b"claim_index"
#: the seq of the last journal record applied, written in the same transaction as its changes
#: (store/lmdb.py): a restart replays the journal past it
JOURNAL_SEQ = b"journal_seq"


def seq_key(seq: int) -> bytes:
    return U64.pack(seq)


def parse_seq(key: bytes) -> int:
    return U64.unpack(key)[0]


def counter_key(name: bytes) -> bytes:
    return COUNTER + name


def is_counter(key: bytes) -> bool:
    """A counter's key (an events-table scan stops at the first one: the seqs are over)."""
    return key[:1] == COUNTER


def event_record(topic: str, body_json: bytes) -> bytes:
    return b'["' + topic.encode() + b'",' + body_json + b"]"


# ---------------------------------------------------------------- resources and claims
def resource_key(kind: bytes, name: str) -> bytes:
    """The key a claim is known by: kind, colon, the resource's name."""
    return kind + b":" + name.encode()


def parse_resource(key: bytes) -> tuple[bytes, bytes]:
    """(kind, name) of a resource key."""
    kind, _, name = key.partition(b":")
    return kind, name


# ---------------------------------------------------------------- tasks
TASK = b"task"
#: a task's claim record sits right after the task record: same table, key id + NUL. A
#: claim then dirties the task's leaf page and no other tree (bench/where.py)
TASK_CLAIM_SUFFIX = b"\0"
READY_ID_AT = 12  # a ready key's id starts after the inverted priority and the order


def task_key(task_id: str) -> bytes:
    return task_id.encode()


def task_claim_key(name: bytes) -> bytes:
    return name + TASK_CLAIM_SUFFIX


def is_task_claim_key(key: bytes) -> bool:
    return key[-1:] == TASK_CLAIM_SUFFIX


def ready_key(priority_rank: int, order: int, task_id: str) -> bytes:
    return U32.pack(priority_rank) + U64.pack(order) + task_id.encode()


def status_key(status: str, task_id: bytes = b"") -> bytes:
    return status.encode() + b"\0" + task_id


def waiting_key(dependency: str, task_id: str = "") -> bytes:
    return dependency.encode() + b"\0" + task_id.encode()


# ---------------------------------------------------------------- agents
def agent_key(agent: str) -> bytes:
    return agent.encode()


# ---------------------------------------------------------------- blockers
BLOCKER_ID_PREFIX = "blk-"


def blocker_id(number: int) -> str:
    return f"{BLOCKER_ID_PREFIX}{number}"


def blocker_number(blocker: str) -> int | None:
    """The number in a blocker id, or None when it is not one."""
    digits = blocker[len(BLOCKER_ID_PREFIX):]
    if not blocker.startswith(BLOCKER_ID_PREFIX) or not digits.isascii() or not digits.isdigit():
        return None
    number = int(digits)
    return number if 0 < number < 2**63 and str(number) == digits else None


def blocker_key(number: int) -> bytes:
    return U64.pack(number)


# ---------------------------------------------------------------- path reservations
#: a reservation is a claim in the claims table: ``path:<pattern> NUL <agent>`` (one record
#: per pattern and holder: shared holders of one pattern coexist)
PATH = b"path"


def path_key(pattern: str, agent: str) -> bytes:
    return PATH + b":" + pattern.encode() + b"\0" + agent.encode()


def parse_path_key(key: bytes) -> tuple[str, str]:
    """(pattern, agent) of a reservation's resource key."""
    pattern, agent = bytes(key)[len(PATH) + 1:].split(b"\0", 1)
    return pattern.decode(), agent.decode()


# ---------------------------------------------------------------- messages
MESSAGE_ID_PREFIX = "msg-"
#: a delivery awaiting its ack is a claim: ``dlv:<message number> <agent>``
DELIVERY = b"dlv"


def message_id(number: int) -> str:
    return f"{MESSAGE_ID_PREFIX}{number}"


def message_number(message: str) -> int | None:
    """The number in a message id, or None when it is not one."""
    digits = message[len(MESSAGE_ID_PREFIX):]
    if not message.startswith(MESSAGE_ID_PREFIX) or not digits.isascii() or not digits.isdigit():
        return None
    number = int(digits)
    return number if 0 < number < 2**63 and str(number) == digits else None


def message_key(number: int) -> bytes:
    return U64.pack(number)


def inbox_key(agent: str, number: int | None = None) -> bytes:
    """An agent's inbox entry for a message; without ``number``, the prefix of its inbox."""
    return agent.encode() + b"\0" + (b"" if number is None else U64.pack(number))


def parse_inbox_key(key: bytes) -> tuple[str, int]:
    key = bytes(key)
    return key[:-9].decode(), U64.unpack(key[-8:])[0]


def pending_key(agent: str, rank: int | None = None, number: int = 0) -> bytes:
    """A delivery waiting for its agent, in priority (rank 0 first) then arrival order;
    without ``rank``, the prefix of the agent's waiting deliveries."""
    head = agent.encode() + b"\0"
    return head if rank is None else head + bytes((rank,)) + U64.pack(number)


def parse_pending_key(key: bytes) -> tuple[str, int]:
    """(agent, message number) of a pending key."""
    key = bytes(key)
    return key[:-10].decode(), U64.unpack(key[-8:])[0]


def stream_key(address: str, number: int | None = None) -> bytes:
    return address.encode() + b"\0" + (b"" if number is None else U64.pack(number))


def dead_key(number: int, agent: str = "") -> bytes:
    return U64.pack(number) + agent.encode()


def parse_dead_key(key: bytes) -> tuple[int, str]:
    key = bytes(key)
    return U64.unpack(key[:8])[0], key[8:].decode()


def delivery_key(number: int, agent: str) -> bytes:
    """The resource key of a requires_ack delivery (no NUL: the claim index joins keys with it)."""
    return resource_key(DELIVERY, f"{number} {agent}")


def parse_delivery_key(key: bytes) -> tuple[int, str]:
    number, _, agent = parse_resource(key)[1].partition(b" ")
    return int(number), agent.decode()


# ---------------------------------------------------------------- the audit trail
#: the counter of audit ids (stored with the others, after the events)
AUDIT_COUNTER = b"audit"


#: audit keys count down from here: the newest record is the first after the counters
_AUDIT_TOP = (1 << 64) - 1


def audit_key(number: int) -> bytes:
    return U64.pack(_AUDIT_TOP - number)


def parse_audit_key(key: bytes) -> int:
    return _AUDIT_TOP - U64.unpack(key)[0]


# ---------------------------------------------------------------- records
def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


loads = orjson.loads
