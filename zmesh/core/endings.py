"""Why an agent no longer holds a task: the refusal complete / fail / release / renew get.

Rules it keeps:

* Every ending of a task claim is in the task's history (released, failed, lease_expired,
  claim_expired, unregistered, admin_released) or is its completion, so the refusal is read from the store
  and never guessed; it reads only (a refused request writes nothing).
* The agent's own lapse is ``lease_expired`` (its lease lapsed or it unregistered) or
  ``claim_expired`` (the claim's TTL); a release, failure or completion is ``stale_token``
  (``not_owner`` when no token was given); a token the task has no record of is
  ``stale_token``; the current token in the wrong hands is ``not_owner``.
* Every refusal names who holds the task now (``holder``, ``current`` token) and, when it
  knows, how and when the claim ended (``reason``, ``at``).
"""

from __future__ import annotations

from typing import Any

from ..errors import ClaimExpired, LeaseExpired, NotOwner, RemoteError, StaleToken
from ..protocol.states import TaskStatus
from .context import Now

#: how a claim ended, as a refusal explains it (history ``event``, plus completion)
ENDED = {
    "lease_expired": "the lease of agent '{agent}' expired",
    "unregistered": "agent '{agent}' unregistered",
    "claim_expired": "the claim's TTL ran out",
    "released": "'{agent}' released it",
    "failed": "'{agent}' reported it failed",
    "completed": "'{agent}' completed the task",
    "admin_released": "an admin released the claim of '{agent}'",
}
#: endings that are a lapse (the agent did not end the claim itself) -> the error to raise
LAPSED: dict[str, type[RemoteError]] = {
    "lease_expired": LeaseExpired, "unregistered": LeaseExpired, "claim_expired": ClaimExpired}


def ending(task: dict[str, Any], agent: str, token: int | None) -> dict[str, Any] | None:
    """How a claim on ``task`` ended, from its history (and its completion): the claim
    with ``token``, or without a token the agent's latest one (tokens only increase)."""
    endings = list(task["history"])
    if task["status"] == TaskStatus.COMPLETED and task.get("completed_token") is not None:
        endings.append({"ts": task["updated"], "event": "completed", "agent": task["completed_by"],
                        "token": task["completed_token"]})
    if token is not None:
        return next((e for e in endings if e.get("token") == token), None)
    mine = [e for e in endings if e.get("agent") == agent and e.get("token") is not None]
    return max(mine, key=lambda e: e["token"], default=None)


def refusal(task: dict[str, Any], claim: dict[str, Any] | None, agent: str, token: int | None,
            now: Now) -> RemoteError:
    """Why ``agent`` (with ``token``) does not hold ``task``, given its current ``claim``."""
    task_id = task["id"]
    holder, current = (claim["agent"], claim["token"]) if claim else (None, None)
    if claim is not None and token is not None and claim["token"] == token:
        return NotOwner(f"agent '{agent}' does not hold '{task_id}': '{holder}' holds it with "
                        f"token {token}", {"task": task_id, "agent": agent, "owner": holder})
    now_clause = (f"'{holder}' holds it now (token {current})" if claim
                  else f"'{task_id}' is not claimed (status {task['status']})")
    ended = ending(task, agent, token)
    if ended is None:
        if token is not None:
            held = f"'{holder}' holds it with token {current}" if claim else now_clause
            return StaleToken(f"token {token} is not the current claim on '{task_id}': {held}",
                              {"task": task_id, "token": token, "holder": holder, "current": current})
        return NotOwner(f"agent '{agent}' does not hold '{task_id}': {now_clause}",
                        {"task": task_id, "agent": agent, "owner": holder})
    reason, ended_by, ended_token = ended["event"], ended["agent"], ended["token"]
    ago = max(0.0, now.wall - ended["ts"])
    how = (ENDED[reason].format(agent=ended_by) if reason in ENDED
           else f"'{ended_by}''s claim ended ({reason})")
    details = {"task": task_id, "token": ended_token, "agent": ended_by, "reason": reason,
               "at": ended["ts"], "holder": holder, "current": current}
    lapsed = LAPSED.get(reason)
    if lapsed is not None and ended_by == agent:
        after = f"; '{holder}' holds it now (token {current})" if claim else (
            f"; it is {task['status']} now" if task["status"] != TaskStatus.AVAILABLE else "")
        return lapsed(f"claim on '{task_id}' (token {ended_token}) lapsed {ago:.1f} s ago: {how}; "
                      f"the task went back to the pool{after}", details)
    if token is None:  # the agent's own latest claim ended by its own hand (or completion)
        return NotOwner(f"agent '{agent}' does not hold '{task_id}': its claim (token {ended_token}) "
                        f"ended when {how} {ago:.1f} s ago; {now_clause}",
                        {"task": task_id, "agent": agent, "owner": holder} | details)
    whose = "" if ended_by == agent else f" was '{ended_by}''s claim, not '{agent}''s: it"
    return StaleToken(f"token {token} on '{task_id}'{whose} ended when {how} {ago:.1f} s ago; "
                      f"{now_clause}", details)
