"""The stored layout: every table, its fixed key-prefix byte, and the keys and records in it.

Rules it keeps:

* Every table has a prefix byte written here next to its name. A prefix never depends on a
  table's place in a list, and a prefix once used is never given to another table (data on
  disk is read by it). A new table takes a new byte.
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
    "meta": 0x10,        # b"schema", b"broker_id", b"claim_index" (left by a clean shutdown)
    "tasks": 0x11,       # task id -> task record; task id + NUL -> its claim record
    "claims": 0x12,      # resource key -> claim record, for kinds without a slot of their own
    "agents": 0x13,      # agent id -> agent record
    "ready": 0x14,       # claim_next order: inverted priority (4), order (8), id -> b""
    "waiting_on": 0x15,  # dependency id NUL waiting task id -> b""
    "by_status": 0x16,   # status NUL task id -> b"" (waiting, completed, dead)
    "events": 0x17,      # seq (8 bytes BE) -> [topic, body]; COUNTER + name -> counter (8 bytes)
    "blockers": 0x18,    # blocker number (8 bytes BE) -> blocker record
    "open_blockers": 0x19,  # blocker number (8 bytes BE) -> b"" while it is open
}
assert len(set(TABLES.values())) == len(TABLES), "two tables share a prefix byte"

U64 = struct.Struct(">Q")
U32 = struct.Struct(">I")

# ---------------------------------------------------------------- meta
SCHEMA = b"schema"
BROKER_ID = b"broker_id"
#: the resource keys claimed at a clean shutdown, NUL-separated (claims.Claims.checkpoint)
CLAIM_INDEX = b"claim_index"

# ---------------------------------------------------------------- events and counters
#: counters sit after every 8-byte seq in the events table, so the newest events and the
#: counters share a leaf page: a write dirties one page less than with a table of their own
COUNTER = b"\xff"


def seq_key(seq: int) -> bytes:
    return U64.pack(seq)


def parse_seq(key: bytes) -> int:
    return U64.unpack(key)[0]


def counter_key(name: bytes) -> bytes:
    return COUNTER + name


def is_counter(key: bytes) -> bool:
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


# ---------------------------------------------------------------- records
def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


loads = orjson.loads
