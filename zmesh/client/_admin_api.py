"""The admin and audit ops of the public client API, defined once for both drivers (Api
includes them).

Rules: as _api.py's. Each admin method is one request; with security on the broker runs it
only for a connection whose key is an admin key (``forbidden`` otherwise, audited). Purging
by status answers in pages (``more``): :meth:`AdminApi.admin_purge` returns one page and a
caller repeats it while ``more`` is true. The audit trail is read by observer and admin keys
(agents get ``forbidden``): :meth:`AdminApi.audit_page` is one request, :meth:`AdminApi.audit`
pages through ``next`` until it has ``limit`` records or the trail is exhausted; its paging
is a flow (a generator of calls, _flows.py) that each driver runs with ``_flow``, so it exists once.
"""

from __future__ import annotations

from typing import Any

from ..errors import BadRequest
from ..protocol.fields import MAX_INT, MAX_LIST_LIMIT
from ..protocol.ops.audit import DEFAULT_AUDIT_LIMIT
from ..protocol.records import (
    AdminReleased,
    AuditPage,
    AuditRecord,
    Backup,
    Purged,
    Task,
)
from ._checks import check_bool, check_timeout
from ._dual import op
from ._flows import DriverHooks, Flow
from ._protocol import Call, _identity


def audit_pages(body: dict[str, Any], limit: Any) -> Flow[list[AuditRecord]]:
    """Audit requests following ``next`` until ``limit`` records (newest first) or the end."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_INT:
        raise BadRequest(f"field 'limit' must be an integer between 1 and {MAX_INT}", {"field": "limit"})
    records: list[AuditRecord] = []
    while True:
        page: AuditPage = yield Call("audit", dict(body, limit=min(limit - len(records), MAX_LIST_LIMIT)), _identity)
        records += page["records"]
        if page["next"] is None or len(records) >= limit:
            return records
        body = dict(body, before=page["next"])


class AdminApi(DriverHooks):
    """Force-release, purge, requeue; the audit trail."""

    @op
    def admin_release(self, *, task: str | None = None, agent: str | None = None, reason: str = "") -> AdminReleased:
        """Release one task's claim whoever holds it (``task``), or end an agent's lease with
        every claim and reservation it holds (``agent``): exactly one of the two."""
        return self._call(Call("admin_release", {"task": task, "agent": agent, "reason": reason}, _identity))

    @op
    def admin_purge(self, *, task: str | None = None, status: str | None = None, limit: int = 1000) -> Purged:
        """Delete one task (``task``) or up to ``limit`` tasks of a ``status`` (completed or
        dead); returns {purged, kept, more}."""
        return self._call(Call("admin_purge", {"task": task, "status": status, "limit": limit}, _identity))

    @op
    def backup(self, dest: str, *, keys: bool = True, wait: float = 3600.0) -> Backup:
        """A compacted copy of the broker's data into ``dest`` (an absolute path of a new or
        empty directory on the broker's host), taken while it serves, with the broker's keys
        in ``dest``/keys unless ``keys`` is false; the answer comes when the copy is done, so
        the call waits up to ``wait`` seconds more than the client's timeout. Returns {dest,
        bytes, seconds, broker_id, seq, keys}."""
        wait = check_timeout("wait", wait)  # type: ignore[assignment]
        body = {"dest": dest, "keys": check_bool("keys", keys)}
        return self._call(Call("backup", body, _identity, wait=wait))

    @op
    def admin_requeue(self, task: str) -> Task:
        """Put a dead task back in the pool with its attempts at zero; returns the task."""
        return self._call(Call("admin_requeue", {"task": task}, _identity))

    @op
    def audit_page(self, *, agent: str | None = None, task: str | None = None, op: str | None = None,
                   result: str | None = None, since: float | None = None, before: int | None = None,
                   limit: int = DEFAULT_AUDIT_LIMIT) -> AuditPage:
        """One audit request: {records (newest first), next}. Filters combine; ``since`` is
        wall-clock Unix seconds; ``next`` (when not None) is the ``before`` that goes on."""
        return self._call(Call("audit", {"agent": agent, "task": task, "op": op, "result": result,
                                         "since": since, "before": before, "limit": limit}, _identity))

    @op
    def audit(self, *, agent: str | None = None, task: str | None = None, op: str | None = None,
              result: str | None = None, since: float | None = None, before: int | None = None,
              limit: int = DEFAULT_AUDIT_LIMIT) -> list[AuditRecord]:
        """The newest ``limit`` audit records matching the filters, newest first: as many
        requests as it takes (each examines a bounded part of the trail)."""
        return self._flow(audit_pages({"agent": agent, "task": task, "op": op, "result": result,
                                       "since": since, "before": before}, limit))
