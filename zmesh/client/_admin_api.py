"""The admin ops of the public client API, defined once for both drivers (Api includes them).

Rules: as _api.py's. Each method is one request; with security on the broker runs it only
for a connection whose key is an admin key (``forbidden`` otherwise, audited). Purging by
status answers in pages (``more``): :meth:`AdminApi.admin_purge` returns one page and a
caller repeats it while ``more`` is true.
"""

from __future__ import annotations

from typing import Any

from ._protocol import Call, _identity


class AdminApi:
    """Force-release, purge, requeue."""

    def _call(self, call: Call[Any]) -> Any:  # pragma: no cover - drivers override
        raise NotImplementedError

    def admin_release(self, *, task: str | None = None, agent: str | None = None, reason: str = "") -> Any:
        """Release one task's claim whoever holds it (``task``), or end an agent's lease with
        every claim and reservation it holds (``agent``): exactly one of the two."""
        return self._call(Call("admin_release", {"task": task, "agent": agent, "reason": reason}, _identity))

    def admin_purge(self, *, task: str | None = None, status: str | None = None, limit: int = 1000) -> Any:
        """Delete one task (``task``) or up to ``limit`` tasks of a ``status`` (completed or
        dead); returns {purged, kept, more}."""
        return self._call(Call("admin_purge", {"task": task, "status": status, "limit": limit}, _identity))

    def backup(self, dest: str, *, wait: float = 3600.0) -> Any:
        """A compacted copy of the broker's data into ``dest`` (an absolute path of a new or
        empty directory on the broker's host), taken while it serves; the answer comes when
        the copy is done, so the call waits up to ``wait`` seconds more than the client's
        timeout. Returns {dest, bytes, seconds, broker_id, seq}."""
        from ._api import check_timeout  # _api builds on this module

        wait = check_timeout("wait", wait)  # type: ignore[assignment]
        return self._call(Call("backup", {"dest": dest}, _identity, wait=wait))

    def admin_requeue(self, task: str) -> Any:
        """Put a dead task back in the pool with its attempts at zero; returns the task."""
        return self._call(Call("admin_requeue", {"task": task}, _identity))
