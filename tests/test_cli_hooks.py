"""``zmesh hook stop`` and ``zmesh hook prompt`` as Claude Code runs them: a real process, the
event JSON on stdin, a real broker. The output is held to the hook contract: the stop hook
prints exactly {"decision": "block", "reason": str} or nothing, and always exits 0."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from zmesh import Client
from zmesh.testing import BrokerProcess, free_port

from .test_cli import clean_env


def _hook(endpoint: str, which: str, payload: Any, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(clean_env(), XDG_STATE_HOME=str(state))
    return subprocess.run([sys.executable, "-m", "zmesh", "--broker", endpoint, "hook", which, *args],
                          input=payload if isinstance(payload, str) else json.dumps(payload),
                          capture_output=True, text=True, env=env, timeout=30)


def _contract(r: subprocess.CompletedProcess[str]) -> dict[str, Any] | None:
    assert r.returncode == 0, r.stderr
    if not r.stdout.strip():
        return None
    out = json.loads(r.stdout)
    assert set(out) == {"decision", "reason"} and out["decision"] == "block" and isinstance(out["reason"], str)
    return out  # type: ignore[no-any-return]


def test_stop_claims_work_and_blocks_else_lets_the_stop_through(broker: BrokerProcess, tmp_path: Path) -> None:
    stop = {"session_id": "s1", "hook_event_name": "Stop", "stop_hook_active": False}
    assert _contract(_hook(broker.endpoint, "stop", stop, tmp_path, "--agent", "cc")) is None  # nothing to do
    with Client(broker.endpoint) as ops:
        ops.create_task("fix-bug", data={"issue": 12})
        out = _contract(_hook(broker.endpoint, "stop", stop, tmp_path, "--agent", "cc"))
        assert out is not None and "fix-bug" in out["reason"] and '"issue":12' in out["reason"]
        task = ops.task("fix-bug")
        assert task["status"] == "claimed" and task["owner"] == "cc" and f"--token {task['token']}" in out["reason"]
        assert _contract(_hook(broker.endpoint, "stop", dict(stop, stop_hook_active=True), tmp_path,
                               "--agent", "cc")) is None  # nothing left: the stop goes through


def test_the_block_cap_lets_a_stop_through(broker: BrokerProcess, tmp_path: Path) -> None:
    with Client(broker.endpoint) as ops:
        for i in range(5):
            ops.create_task(f"t{i}")
    first = {"session_id": "s2", "stop_hook_active": False}
    again = {"session_id": "s2", "stop_hook_active": True}
    blocked = [_contract(_hook(broker.endpoint, "stop", p, tmp_path, "--agent", "cc", "--max-blocks", "2"))
               for p in (first, again, again)]
    assert [b is not None for b in blocked] == [True, True, False]  # the third stop in a row goes through
    assert _contract(_hook(broker.endpoint, "stop", first, tmp_path, "--agent", "cc", "--max-blocks", "2"))  # new turn


@pytest.mark.parametrize("payload", ["", "not json", "[1, 2]"])
def test_a_bad_payload_never_blocks(broker: BrokerProcess, tmp_path: Path, payload: str) -> None:
    with Client(broker.endpoint) as ops:
        ops.create_task("t")
    r = _hook(broker.endpoint, "stop", payload, tmp_path, "--agent", "cc")
    if payload:
        assert _contract(r) is None and "zmesh hook:" in r.stderr
    else:  # an empty payload is a stop with no session: it may block
        assert _contract(r) is not None


def test_no_broker_lets_the_stop_through_within_about_a_second(tmp_path: Path) -> None:
    started = time.monotonic()
    r = _hook(f"tcp://127.0.0.1:{free_port()}", "stop", {"session_id": "s"}, tmp_path, "--agent", "cc")
    assert _contract(r) is None and "no reply from the broker" in r.stderr
    assert time.monotonic() - started < 10  # 1 s for the broker, the rest is Python starting


def test_prompt_injects_unread_urgent_messages_once(broker: BrokerProcess, tmp_path: Path) -> None:
    with Client(broker.endpoint) as ops:
        ops.send("prod is down", "stop deploying", to="cc", priority="critical")
        ops.send("fyi", to="cc", priority="low")
        r = _hook(broker.endpoint, "prompt", {"session_id": "s", "prompt": "hi"}, tmp_path, "--agent", "cc")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)["hookSpecificOutput"]
        assert out["hookEventName"] == "UserPromptSubmit"
        assert "prod is down: stop deploying" in out["additionalContext"] and "fyi" not in out["additionalContext"]
        again = _hook(broker.endpoint, "prompt", {"session_id": "s"}, tmp_path, "--agent", "cc")
        assert again.returncode == 0 and again.stdout == ""  # read now: not injected twice
