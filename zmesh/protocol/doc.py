"""docs/PROTOCOL.md, rendered from the tables in :mod:`zmesh.protocol` and the error tree
(``python docs/gen_protocol.py``; a test checks the file is current). Nothing here is a
fact of its own: every limit, op, field, kind, code and topic comes from those tables."""

from __future__ import annotations

import orjson

from .. import errors
from .. import protocol
from .identity import ADMIN_OPS, OPERATOR_OPS, READ_OPS, ROLE_DIRS
from . import (HEARTBEAT_TOPIC, KIND_RULES, MAX_FRAME_BYTES, OPS, PROTOCOL_VERSION,
                       PUB_HEARTBEAT_S, TOPICS, VERSION, number_text)


def render_markdown() -> str:
    """docs/PROTOCOL.md, generated from the tables above and errors.WIRE_ERRORS."""
    lines = [
        "# zmesh wire protocol",
        "",
        "<!-- generated from zmesh/protocol/ by `python docs/gen_protocol.py`; do not edit -->",
        "",
        f"Protocol version {PROTOCOL_VERSION} (frame `{VERSION.decode()}`). Transport: ZeroMQ. A client "
        "connects a DEALER socket to the broker's ROUTER endpoint (TCP or IPC), sends `hello`, "
        "and connects a SUB socket to the PUB endpoint the reply names. When the broker binds "
        "`tcp://*:PORT`, the reply names `tcp://*:PUBPORT` and the client substitutes the host it dialled.",
        "",
        "## Frames",
        "",
        "```",
        "Request (client" + (protocol.__doc__ or "").split("Request (client", 1)[1].rstrip(),
        "```",
        "",
        "Bodies are JSON objects (UTF-8). Unknown fields are refused. Integers are 64-bit.",
        "Retrying a request with the same `req_id` (and the same op and body) returns the "
        "original reply while the broker remembers it (recent write requests, in memory), so a "
        "lost reply never becomes a second claim; a different request that reuses an id is "
        "served anew. Clients make ids unique per request (the Python client: a random 16-byte "
        "prefix per client and a counter).",
        "",
        "## Limits",
        "",
        "| limit | value |",
        "|---|---:|",
    ]
    for name in ("MAX_MESSAGE_BYTES", "MAX_FRAMES", "MAX_REQ_ID_BYTES", "MAX_OP_BYTES", "MAX_ID_BYTES",
                 "MAX_NAME_CHARS", "MAX_TEXT_CHARS", "MAX_LIST_ITEMS", "MIN_TTL_S", "MAX_TTL_S", "MAX_PRIORITY",
                 "MAX_ATTEMPTS", "MAX_LIST_LIMIT", "MAX_REPLAY_LIMIT", "MAX_INT", "MAX_TOPIC_CHARS",
                 "MAX_MESSAGE_DATA_BYTES"):
        lines.append(f"| `{name}` | {number_text(getattr(protocol, name))} |")
    lines += ["", "A message above `MAX_MESSAGE_BYTES` gets `too_large`; a single frame above "
              f"{number_text(MAX_FRAME_BYTES)} bytes is dropped by libzmq (ZMQ_MAXMSGSIZE) and the sender is "
              "disconnected. The Python clients refuse an oversized request before sending it.", "",
              "## Field kinds", "",
              "| kind | rule |", "|---|---|"]
    lines += [f"| {kind} | {rule} |" for kind, rule in KIND_RULES.items()]
    lines += ["", "Integers and numbers are JSON numbers; integers beyond 64 bits, NaN and infinity "
              "are refused (JSON has no NaN; a client must not send `null` for one). A field sent "
              "as `null` counts as absent (its default applies).", "",
              "## Ops", ""]
    for op in OPS.values():
        lines.append(f"### `{op.name}`" + ("  (durable write: reply after commit)" if op.writes else "")
                     + ("  (admin only when security is on)" if op.admin else "")
                     + ("  (observers and admins only when security is on)" if op.operator else ""))
        lines += ["", op.doc, ""]
        if op.fields:
            lines += ["| field | type | required | default | meaning |", "|---|---|---|---|---|"]
            for f in op.fields:
                rng = f" ({number_text(f.lo)}..{number_text(f.hi)})" if f.lo is not None and f.hi is not None else (
                    f" (>= {number_text(f.lo)})" if f.lo is not None else "")
                default = "" if f.required or f.default is None else f"`{orjson.dumps(f.default).decode()}`"
                lines.append(f"| `{f.name}` | {f.kind}{rng} | {'yes' if f.required else ''} | {default} | {f.doc} |")
            lines.append("")
        lines.append(f"Returns: `{op.returns}`" + (f"; errors: {', '.join(f'`{e}`' for e in op.errors)}" if op.errors else ""))
        lines.append("")
    lines += ["## Roles (security on)", "",
              "With security on (CurveZMQ, `zmesh broker --secure`) every connection carries the role of "
              "its key: the allow-list directory it is in (" + ", ".join(
                  f"`{role}`: " + (f"`{sub}/`" if sub else "the directory itself") for role, sub in ROLE_DIRS.items())
              + "). An `observer` runs only these ops: " + ", ".join(f"`{op}`" for op in OPS if op in READ_OPS)
              + ". An `agent` runs every op but the admin ones (" + ", ".join(f"`{op}`" for op in OPS if op in ADMIN_OPS)
              + ") and the operator ones, which show what every key did (" + ", ".join(
                  f"`{op}`" for op in OPS if op in OPERATOR_OPS) + "); an `admin` runs every op. Anything else is refused with `forbidden`, and an agent id "
              "used by another key than the one it belongs to with `not_owner`; both are recorded as "
              "the event `audit.refused`. With security off every client may run every op.", ""]
    lines += ["## Error codes", "", "Every op may also answer `bad_request`, `too_large`, `unknown_op`, "
              "`unsupported_version` or `internal`.", "", "| code | meaning |", "|---|---|"]
    for code, cls in errors.WIRE_ERRORS.items():
        lines.append(f"| `{code}` | {cls.meaning} |")
    lines += ["", "## Event topics", "",
              "Every event body has `ts` (broker wall clock, seconds). Task events carry "
              "`task_id, old_status, new_status, claimed_by`; one transaction's events have "
              "consecutive sequence numbers and are published together after the commit.", "",
              "| topic | when |", "|---|---|"]
    for topic, doc in TOPICS.items():
        lines.append(f"| `{topic}` | {doc} |")
    lines += ["", f"Besides events, the PUB socket sends `[{HEARTBEAT_TOPIC}, seq, {{}}]` every "
              f"{PUB_HEARTBEAT_S:g} s, where seq is the latest event's: a subscriber whose last "
              "seen seq is lower asks `replay` for the rest. Clients subscribe to every topic "
              "(so every seq is seen and any gap noticed) and filter topics themselves.", ""]
    return "\n".join(lines)

