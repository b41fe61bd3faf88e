"""docs/CLI.md, generated from the command tree itself: every command, option, help text,
exit code and ``--json`` shape. The shapes below are the contract scripts rely on; the
tests run every command with ``--json`` and hold its output to the keys listed here.
"""

from __future__ import annotations

import inspect
from typing import Any

import click

from .. import errors

#: keys of a task as every task command prints it (and as the broker's replies carry it)
TASK_KEYS = ("id", "type", "data", "priority", "requires", "max_attempts", "depends_on", "status",
             "attempts", "claims", "created", "updated", "result", "history", "owner", "token",
             "expires_in", "completed_by", "completed_token")
#: keys of a claim as claim, next and renew print it
CLAIM_KEYS = ("task", "agent", "token", "lease", "expires_in")
STATUS_KEYS = ("tasks", "agents", "claims", "states", "evasive", "idle_queue", "blockers", "seq", "token",
               "broker_id", "version", "pid", "durability", "uptime", "endpoints", "pub", "data",
               "batches", "requests", "agent_list")
ERROR_KEYS = ("code", "message", "details")
#: the health op's answer, as `zmesh health --json` prints it
HEALTH_KEYS = ("healthy", "reasons", "broker_id", "version", "uptime", "seq", "store_bytes", "used_bytes", "map_size",
               "map_use", "commit_p95_ms", "commits", "disk_free_bytes", "disk_size_bytes", "disk_free_ratio",
               "thresholds")
#: a presence report's answer
REPORT_KEYS = ("agent", "state", "position", "helpers", "seq")
#: keys of an agent as stats and agents print it (the broker's agent view)
AGENT_KEYS = ("id", "capabilities", "groups", "metadata", "ttl", "lease", "registered", "implicit", "completed",
              "failed", "state", "since", "task", "last_task", "reason", "message", "cost", "blocker",
              "liveness", "position", "expires_in", "waiting_since", "uptime", "claims", "key")
#: keys of a blocker
BLOCKER_KEYS = ("id", "agent", "type", "description", "severity", "requires", "task", "status", "raised",
                "resolved", "resolved_by", "resolution")

#: command path -> (top-level keys of its --json output, what it is); None: no JSON output
JSON_SHAPES: dict[str, tuple[tuple[str, ...], str] | None] = {
    "broker": None,
    "top": None,
    "task add": (TASK_KEYS, "the task created"),
    "task claim": (CLAIM_KEYS, "the claim: fencing token, lease id, seconds until it lapses (null: never)"),
    "task next": (CLAIM_KEYS + ("record",), "the claim, and `record`: the task claimed"),
    "task done": (TASK_KEYS, "the task, now completed"),
    "task fail": (TASK_KEYS, "the task, now available again or dead"),
    "task release": (TASK_KEYS, "the task, now available"),
    "task renew": (CLAIM_KEYS, "the claim with its new expiry"),
    "task show": (TASK_KEYS, "the task with its owner, token and history"),
    "task ls": (("tasks", "more", "next_after"),
                "`tasks`: a list of tasks; `more`: whether more follow; `next_after`: the --after "
                "for the next page (null when none)"),
    "status": (STATUS_KEYS, "broker summary: `tasks` counts by status, `states` agents by state, "
               "`evasive` how many missed a heartbeat period, `idle_queue` idle agents in arrival "
               "order, `blockers` how many are open, `agent_list` one object per agent"),
    "health": (HEALTH_KEYS, "`healthy` and, when not, `reasons` (one line per failed check: map_use, commits, disk); "
               "the store's size on disk, bytes used of the LMDB map and `map_use` (their ratio), the p95 of the "
               "last `commits` batches in ms, free disk, and the `thresholds` judged against"),
    "publish": (("topic", "seq"), "the event topic (msg.TOPIC) and its sequence number"),
    "events": (("topic", "seq", "body"), "one JSON object per line, per event"),
    "version": (("client", "protocol", "broker", "broker_protocol", "broker_id"),
                "versions; the broker's are null when it did not answer (exit 3)"),
    "agent idle": (REPORT_KEYS, "the report's answer: `position` in the idle queue (1: waiting longest)"),
    "agent busy": (REPORT_KEYS, "the report's answer (`position` null: not idle)"),
    "agent blocked": (REPORT_KEYS, "the report's answer"),
    "agent completed": (REPORT_KEYS, "the report's answer: idle again, `position` at the back of the queue"),
    "agent help": (REPORT_KEYS, "the report's answer: `helpers`, each {agent, cover, matched, missing, "
                                "position, waiting_since, capabilities}"),
    "agents": (("agents", "idle_queue", "seq"), "`agents`: one object per agent (keys as `stats`); "
                                                "`idle_queue`: idle agent ids in arrival order"),
    "helpers": (("helpers",), "the helpers, best cover first, then longest waiting"),
    "stats": (AGENT_KEYS, "one agent: presence, liveness, lease, stats, claims held, and `key`: the client key "
              "it belongs to (Z85; null with security off)"),
    "blocker raise": (("blocker", "helpers", "seq"), "`blocker`: the blocker raised; `helpers`: who could help"),
    "blocker resolve": (BLOCKER_KEYS, "the blocker, now resolved"),
    "blocker ls": (("blockers", "more", "next_after"),
                   "`blockers`: a list of blockers; `more`: whether more follow; `next_after`: the "
                   "--after for the next page (null when none)"),
    "send": (("id", "addressed", "online", "queued", "seq"),
             "the message id; how many live agents it was addressed to, reached at once, left waiting"),
    "assign": (("task", "agent", "token", "lease", "expires_in", "id", "queued"),
               "the claim taken on the agent's lease and the message id (`queued`: it waits in the inbox, "
               "token null until delivered)"),
    "read": (("messages",), "`messages`: the messages, oldest first (with `delivery` state for --agent)"),
    "ack": (("id", "agent", "acked_at", "note", "already"), "the ack (`already`: it was acked before)"),
    "unacked": (("deliveries",), "`deliveries`: each {id, agent, state, deliveries, token, expires_in, "
                                 "subject, priority, from}"),
    "dead-letters": (("dead",), "`dead`: each {id, agent, deliveries, dead_at, subject, priority, from}; "
                                "with --requeue: {id, requeued}"),
    "msgstats": (("pending", "outstanding", "dead", "messages", "oldest", "retention", "max_age", "latency_ms"),
                 "`pending` per priority, `outstanding` acks, `dead` letters, `messages` stored, "
                 "`latency_ms` per priority {p50, p95, n}"),
    "group join": (("agent", "groups"), "the agent's groups"),
    "group leave": (("agent", "groups"), "the agent's groups"),
    "guard install": None,
    "guard check": None,
    "hook stop": None,  # its stdout is the hook contract: {"decision": "block", "reason"} or nothing
    "hook prompt": None,  # {"hookSpecificOutput": {"hookEventName", "additionalContext"}} or nothing
    "mcp": None,  # its stdout is the MCP protocol (JSON-RPC); see docs/MCP.md
    "gateway": None,  # a server: its answers are HTTP (OpenAPI at /openapi.json)
    "discover": (("brokers",), "`brokers`: each {mesh, broker_id, endpoint, pub_endpoint, key (Z85, null: "
                 "security off), fingerprint, version, preferred (the one its mesh's clients join when several "
                 "serve it)}; none answered is exit 3"),
    "keygen": (("public", "secret", "key", "fingerprint"), "the two files written, the public key in Z85 and its "
               "fingerprint"),
    "admin release": (("task", "agent", "released"), "the task released (null with --agent), the agent that held "
                      "it, and every resource released"),
    "admin purge": (("purged", "kept"), "`purged`: the task ids deleted; `kept`: each {task, reason} a --status "
                    "purge left (claimed, or tasks wait on it)"),
    "admin requeue": (("requeued",), "`requeued`: the task ids put back in the pool; with --message: {id, "
                      "requeued} (the recipients)"),
    "config show": (("config", "sources", "file"), "`config`: every setting's effective value; `sources`: where "
                    "each came from (default, file PATH, env ZMESH_X); `file`: the config file read, or null"),
    "backup": (("dest", "bytes", "seconds", "broker_id", "seq", "keys"), "where the copy is (on the broker's "
               "host), its size, how long it took, and the event seq every write up to which it holds; `keys`: "
               "{broker_key (fingerprint, or null: no pair), authorized (client keys copied)}, null with --no-keys"),
    "restore": (("data", "broker_id", "schema", "seq", "tasks", "kept", "keys"), "the data directory made, the "
                "broker it was, its schema, event seq and task counts by status; `kept`: where the data that was "
                "there went (--force), or null; `keys`: {broker_key, authorized, key_file, authorized_keys (where "
                "they went, null: not in the backup), kept (keys moved aside)}, null when none were restored"),
    "audit": (("records",), "`records`: the audit records shown, oldest first, each {id, ts, op, agent, task, "
              "result (ok, waiting or an error code), seq (the event seq after it), key (fingerprint; null with "
              "security off), role}"),
    "wait": (("kind",), "`kind`: task, message or timeout; a task adds `task`, `claimed`, `claim` (the claim "
             "as `task claim` prints it, or null) and `record` (the task); a message adds `message`; a timeout "
             "adds `waited`"),
    "reserve": (("agent", "lease", "reservations"), "`reservations`: each {pattern, mode, token, expires_in, renewed}"),
    "release-paths": (("agent", "released"), "the patterns released"),
    "reservations": (("reservations", "waiting"), "`reservations`: each {pattern, agent, mode, token, since, ttl, "
                     "expires_in}; `waiting`: the reserves in the queue, first come first, each {agent, paths, "
                     "mode, gives_up_in}"),
}


def commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    """Every leaf command as (path, command), in tree order."""
    out: list[tuple[str, click.Command]] = []
    for name in sorted(group.commands):
        cmd = group.commands[name]
        path = f"{prefix}{name}"
        if isinstance(cmd, click.Group):
            out += commands(cmd, path + " ")
        else:
            out.append((path, cmd))
    return out


def _option_row(param: click.Parameter, ctx: click.Context) -> str:
    record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
    if record is None:
        return ""
    names, text = record
    pipe = "\\|"
    return f"| `{names.replace('|', pipe)}` | {text.replace('|', pipe)} |"


def render_markdown(root: click.Group) -> str:
    from . import EXIT_CODES

    lines = ["# The zmesh command", "",
             "<!-- generated from zmesh/cli by `python docs/gen_cli.py`; do not edit -->", "",
             "Every command takes `--json` (before or after its name). Data goes to stdout; an error is "
             "one line on stderr, `zmesh: CODE: message`, or with `--json` one JSON object "
             "`{\"code\", \"message\", \"details\"}` (`details.field` names the option or field at fault).",
             "", "## Exit codes", "", "| code | meaning |", "|---:|---|"]
    lines += [f"| {code} | {meaning} |" for code, meaning in EXIT_CODES.items()]
    lines += ["", "## Error codes", "", "| code | exit | meaning |", "|---|---:|---|"]
    for cls in _error_classes():
        lines.append(f"| `{cls.code}` | {errors.exit_code(cls(''))} | {cls.meaning} |")
    lines += ["", "## Global options", "", "| option | meaning |", "|---|---|"]
    ctx = click.Context(root, info_name="zmesh")
    lines += [row for p in root.params if (row := _option_row(p, ctx))]
    for path, cmd in commands(root):
        ctx = click.Context(cmd, info_name=f"zmesh {path}")
        usage = " ".join([f"zmesh {path}", *cmd.collect_usage_pieces(ctx)])
        lines += ["", f"## `zmesh {path}`", "", f"`{usage}`", "", inspect.cleandoc(cmd.help or ""), ""]
        rows = [row for p in cmd.params if (row := _option_row(p, ctx))]
        if rows:
            lines += ["| option | meaning |", "|---|---|", *rows, ""]
        shape = JSON_SHAPES[path]
        if shape is None:
            lines.append("No `--json` output.")
        else:
            keys, what = shape
            lines.append(f"`--json`: {what}. Keys: " + ", ".join(f"`{k}`" for k in keys) + ".")
    lines.append("")
    return "\n".join(lines)


def _error_classes() -> list[Any]:
    seen: list[Any] = []
    stack = [errors.ZmeshError]
    while stack:
        cls = stack.pop(0)
        if cls not in (errors.ZmeshError, errors.RemoteError) and cls.__module__ == errors.__name__ \
                and cls not in seen:
            seen.append(cls)
        stack += cls.__subclasses__()
    return sorted(seen, key=lambda c: c.code)
