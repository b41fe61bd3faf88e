"""The broker's own ops: hello, publish, and the views (snapshot, agent_list, status, health,
replay); the PUB heartbeat.

Rules it keeps:

* What travels is stated once, here (see ops/agents.py).
* Views are reads: they change nothing and wait for no commit. A view that a subscriber
  continues with events carries the ``seq`` it was taken at.
"""

from __future__ import annotations

from ..fields import MAX_INT, MAX_MESSAGE_DATA_BYTES, MAX_REPLAY_LIMIT, MAX_TOPIC_CHARS, Field, Op

HELLO = Op(
        "hello",
        "Handshake: broker id, protocol version, PUB endpoint(s), durability.",
        returns="{broker_id, protocol, version, pub, endpoints, durability, seq}",
    )

PUBLISH = Op(
        "publish",
        "Broadcast a message to every subscriber. It becomes the event `msg.<topic>` "
        "(body: data, from, ts) with the next seq: kept in the event log, so a subscriber "
        "that was away replays it, and published after the commit. Subscribers filter by "
        "topic prefix.",
        (
            Field("topic", "topic", True, doc=f"dotted name of [A-Za-z0-9._-], up to {MAX_TOPIC_CHARS} characters"),
            Field("data", "payload", default=None, doc=f"any JSON value, up to {MAX_MESSAGE_DATA_BYTES} bytes encoded"),
            Field("agent", "id", doc="sender, shown to subscribers as `from`"),
        ),
        writes=True,
        returns="{topic, seq}",
        errors=("too_large",),
    )

VIEW_OPS: tuple[Op, ...] = (
    Op(
        "snapshot",
        "Everything a coordinator or dashboard starts from, in one reply taken at one "
        "sequence number: every agent (as agent_list), the idle queue, the open blockers and "
        "the task counts. Applying the events after `seq` keeps it current: nothing is lost "
        "and nothing counted twice.",
        (),
        returns="{agents: [agent], idle_queue: [agent ids], blockers: [blocker], tasks: {status: n}, seq}",
    ),
    Op("agent_list", "Registered agents with presence, liveness, lease and stats, and the "
       "idle queue in arrival order.", (), returns="{agents: [agent], idle_queue: [agent ids], seq}"),
    Op("status", "Broker summary: task counts by status, agents by state and liveness, the "
       "idle queue, open blockers, sequence, durability.", (), returns="{...}"),
    Op("health", "Is the broker healthy? `healthy` is false, with one line per reason, when the LMDB map "
       "is nearly full, recent commits are slow or the data directory's disk is nearly full (the "
       "thresholds are in the answer). Also the broker's id, version, uptime, sequence, store size and "
       "map use, and the p95 of its recent commits. A read op with no agent: any role may ask.", (),
       returns="{healthy, reasons: [text], broker_id, version, uptime, seq, store_bytes, used_bytes, map_size, "
               "map_use, commit_p95_ms, commits, disk_free_bytes, disk_size_bytes, disk_free_ratio, thresholds}"),
    Op(
        "replay",
        "Events with seq > since, oldest first (the bounded event log). Refused with "
        "snapshot_required when some of them were trimmed, and with bad_request (details: "
        "field `since`, `last_seq`) when `since` is ahead of the broker's last event: a "
        "subscriber that followed another or a restored broker starts again from `last_seq`.",
        (
            Field("since", "int", True, doc="last seq the subscriber has", lo=0, hi=MAX_INT),
            Field("limit", "int", default=1000, lo=1, hi=MAX_REPLAY_LIMIT),
            Field("topics", "namelist", default=[], doc="topic prefixes; empty means all"),
        ),
        returns="{events: [{topic, seq, body}], last_seq, more}",
        errors=("snapshot_required", "bad_request"),
    ),
)

#: published every PUB_HEARTBEAT_S with the latest seq (not logged, not a state change):
#: a subscriber that is behind it replays, so a lost last event is noticed within a second
HEARTBEAT_TOPIC = "$hb"
PUB_HEARTBEAT_S = 1.0
