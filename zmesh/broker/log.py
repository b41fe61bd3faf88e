"""What the broker's log says about expiries and refusals, one line per notable event.

Rules it keeps:

* Each lapsed lease (with the claims it released), claim TTL and evasive agent is one INFO
  line; past :data:`EXPIRY_LINES_PER_PASS` in one pass, one WARNING sums up the storm, so a
  mass expiry never floods the log.
* A refusal for who the caller is (its role, or an agent of another key: core/identity.py)
  is :func:`audited`; the broker logs it with the key, rate-limited, beside the event the
  core records.
"""

from __future__ import annotations

import logging

from ..errors import RemoteError
from ..protocol import Event

log = logging.getLogger("zmesh.broker")

#: the broker's notable log lines by their ``event`` name (JSON logs carry it as a key; docs/
#: OPERATIONS.md lists this table, and a test holds the broker's code to it)
LOG_EVENTS: dict[str, str] = {
    "broker.recovered": "the store was opened: leases restarted, claims held, how long it took",
    "broker.ready": "the broker serves: id, endpoints, data, durability, pid",
    "broker.drained": "a stop answered what was received: how many, how long, how many were left",
    "broker.stopped": "the claim index is written and the store closed",
    "request.refused": "a peer's request could not be read (bad frames, too large): its address and why; "
                       "rate-limited per peer",
    "auth.refused": "a key was refused an op for its role or for acting as another key's agent; rate-limited "
                    "per key",
    "lease.expired": "an agent's lease lapsed: the claims it released",
    "agent.evasive": "an agent missed a heartbeat period",
    "claim.expired": "a claim's own TTL ran out: the task is available again",
    "expiry.storm": "more expiries in one pass than are logged one by one: the counts",
    "commit.slow": "a batch took longer than 0.5 s to apply, commit and sync; rate-limited",
    "store.near_full": "the LMDB map is 90% used; rate-limited",
    "store.full": "the LMDB map filled: it was grown and the batch applied again",
    "discovery.failed": "the zeroconf advertisement could not start: clients need an address",
    "backup.started": "a backup began: where, and the event seq it holds at least",
    "backup.done": "a backup finished: its size and how long it took",
    "backup.failed": "a backup could not be written: why",
    "metrics.refused": "a scrape of /metrics without the metrics_token's bearer token (rate-limited per peer)",
    "store.opened": "the store was opened: whether its LMDB file was trusted and why, journal records replayed, "
                    "where the journal ended, how long it took",
    "store.rebuilt": "the LMDB file was not trusted (an OS crash or an unclean stop across a reboot): it was "
                     "rebuilt from the last snapshot, then the journal replayed",
    "store.checkpoint": "a snapshot was taken at a journal seq (the journal's older segments are retired)",
    "store.checkpoint_failed": "a snapshot could not be written: why (the journal keeps every record meanwhile)",
    "journal.cut": "recovery found a torn or corrupt record or a missing segment: the seq recovered to, what "
                   "was not replayed and where it was kept",
    "journal.restarted": "the journal could not continue from LMDB's state (a gap, or LMDB ahead of it): it "
                         "starts over after a snapshot",
    "journal.sync_failed": "an fdatasync of the journal failed: the broker takes no more writes",
    "journal.slow_spare": "a writer waited for the next preallocated segment (the disk is slow or busy)",
    "journal.spare_failed": "the next segment could not be prepared: why (retried)",
    "cluster.active": "with an etcd store: this broker leads its mesh: the epoch, the log's seq, how many entries "
                      "it applied from the log first",
    "cluster.deposed": "with an etcd store: this broker's term is over (its lease gone, an append refused, etcd "
                       "out of reach past the leader TTL): it takes no more writes and stops",
}

#: lease/claim expiries logged one line each per pass; more become one summary line
EXPIRY_LINES_PER_PASS = 20


def log_expiries(events: list[Event]) -> None:
    """One line per lapsed lease (with the claims it released), claim TTL or evasive agent; past
    EXPIRY_LINES_PER_PASS lines, one summary of the storm instead. Each line carries its event
    (``lease.expired``, ``agent.evasive``, ``claim.expired``, ``expiry.storm``) for JSON logs."""
    lines: list[tuple[str, dict[str, object]]] = []
    for event in events:
        body = event.body
        if event.topic == "agent.expired":
            released = body.get("released") or []
            shown = ", ".join(map(repr, released[:10])) + (", ..." if len(released) > 10 else "")
            lines.append((f"lease of agent {body.get('agent')!r} expired (no heartbeat within its TTL); "
                          f"released {len(released)} claim(s)" + (f": {shown}" if released else ""),
                          {"event": "lease.expired", "agent": body.get("agent"), "released": len(released)}))
        elif event.topic == "agent.evasive":
            lines.append((f"agent {body.get('agent')!r} is evasive (missed a heartbeat period); its lease "
                          f"lapses in {body.get('expires_in')} s unless it is heard from",
                          {"event": "agent.evasive", "agent": body.get("agent")}))
        elif event.topic == "task.released" and body.get("reason") == "claim_expired":
            lines.append((f"claim on task {body.get('task_id')!r} by agent {body.get('agent')!r} expired "
                          "(its TTL ran out); the task is available again",
                          {"event": "claim.expired", "task": body.get("task_id"), "agent": body.get("agent")}))
    for line, extra in lines[:EXPIRY_LINES_PER_PASS]:
        log.info("%s", line, extra=extra)
    if len(lines) > EXPIRY_LINES_PER_PASS:
        leases = sum(event.topic == "agent.expired" for event in events)
        evasive = sum(event.topic == "agent.evasive" for event in events)
        claims = len(lines) - leases - evasive
        log.warning("expiry storm: %d lease(s) and %d claim TTL(s) lapsed and %d agent(s) turned evasive at "
                    "once (%d not logged one by one)", leases, claims, evasive,
                    len(lines) - EXPIRY_LINES_PER_PASS,
                    extra={"event": "expiry.storm", "leases": leases, "claims": claims, "evasive": evasive})


def audited(exc: RemoteError) -> bool:
    """A refusal for who the caller is (core/identity.py: its role, or an agent of another
    key), which the broker logs with the key; the core records it as an event too."""
    return exc.code == "forbidden" or (exc.code == "not_owner" and exc.details.get("reason") == "key")
