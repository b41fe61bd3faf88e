"""``zmesh wait`` end to end: a real ``zmesh wait`` process against a real broker, woken by a
task created after it began waiting (claimed with --claim, only found without), by an
assignment, by a message; a task it may not do does not wake it; a timeout is a normal
answer. Every process is stopped by PID."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Iterator

import pytest

from zmesh import Client
from zmesh.testing import BrokerProcess

from .conftest import wait_for
from .test_cli import Cli, clean_env


@pytest.fixture
def z(broker: BrokerProcess) -> Cli:
    return Cli(broker.endpoint)


@pytest.fixture
def ops(broker: BrokerProcess) -> Iterator[Client]:
    with Client(broker.endpoint, timeout=5) as c:
        yield c


class Waiting:
    """``zmesh wait`` running in the background until it answers."""

    def __init__(self, endpoint: str, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "zmesh", "--broker", endpoint, "wait", "--json", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL, env=clean_env())

    def answer(self, timeout: float = 30) -> dict[str, Any]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            self.proc.kill()
            self.proc.wait(10)
        assert self.proc.returncode == 0, err
        return json.loads(out)  # type: ignore[no-any-return]


def _waiting(ops: Client, agent: str) -> bool:
    """The wait reported its agent idle: it listens from here on."""
    try:
        return bool(ops.agent_info(agent)["state"] == "idle")
    except Exception:
        return False


def test_a_task_created_later_wakes_it_and_is_claimed(broker: BrokerProcess, ops: Client) -> None:
    w = Waiting(broker.endpoint, "--agent", "w", "--claim", "--timeout", "30", "--ttl", "30")
    try:
        wait_for(lambda: _waiting(ops, "w"), timeout=20, what="the wait to begin")
        ops.create_task("later")
        got = w.answer()
    finally:
        w.proc.kill()
    assert (got["kind"], got["task"], got["claimed"]) == ("task", "later", True)
    assert got["claim"]["agent"] == "w" and got["record"]["id"] == "later"
    task = ops.task("later")
    assert (task["status"], task["owner"], task["token"]) == ("claimed", "w", got["claim"]["token"])


def test_without_claim_it_only_finds_and_skips_what_it_cannot_do(broker: BrokerProcess, ops: Client) -> None:
    ops.create_task("gpu-job", requires=["gpu"])
    w = Waiting(broker.endpoint, "--agent", "cpu", "--capability", "python", "--timeout", "30")
    try:
        wait_for(lambda: _waiting(ops, "cpu"), timeout=20, what="the wait to begin")
        ops.create_task("py-job", requires=["python"])
        got = w.answer()
    finally:
        w.proc.kill()
    assert (got["kind"], got["task"], got["claimed"], got["claim"]) == ("task", "py-job", False, None)
    assert ops.task("py-job")["status"] == "available"  # found, not taken


def test_an_assignment_and_a_message_wake_it(broker: BrokerProcess, ops: Client) -> None:
    w = Waiting(broker.endpoint, "--agent", "a1", "--timeout", "30")
    try:
        wait_for(lambda: _waiting(ops, "a1"), timeout=20, what="the wait to begin")
        ops.send("hello", {"x": 1}, to="a1")
        got = w.answer()
    finally:
        w.proc.kill()
    assert got["kind"] == "message" and got["message"]["subject"] == "hello" and got["message"]["body"] == {"x": 1}
    ops.create_task("t", requires=["nobody-has-this"])  # assigned: requires are the operator's call
    w = Waiting(broker.endpoint, "--agent", "a2", "--timeout", "30")
    try:
        wait_for(lambda: _waiting(ops, "a2"), timeout=20, what="the wait to begin")
        wait_for(lambda: _assigned(ops, "a2"), timeout=20, what="the assignment")
        got = w.answer()
    finally:
        w.proc.kill()
    assert (got["kind"], got["task"], got["claimed"]) == ("task", "t", True)
    assert ops.task("t")["owner"] == "a2"


def _assigned(ops: Client, agent: str) -> bool:
    """assign() refuses an agent that is not connected yet: try until the wait's client is."""
    try:
        ops.assign(agent, "t")
        return True
    except Exception:
        return False


def test_a_timeout_is_a_normal_answer(z: Cli) -> None:
    got = z.json("wait", "--agent", "idle-one", "--timeout", "0.5", "--json")
    assert got == {"kind": "timeout", "waited": 0.5}
    assert z.ok("wait", "--agent", "idle-one", "--timeout", "0.2").strip() == "nothing within 0.2 s"


def test_an_agent_that_holds_a_task_can_still_wait(broker: BrokerProcess, ops: Client) -> None:
    """The idle report is refused while the agent holds a task (found by a CI run in which an
    assignment landed as the wait connected); the wait goes on and answers the next work."""
    ops.create_task("held")
    ops.claim("held", agent="busy-one", ttl=30)
    w = Waiting(broker.endpoint, "--agent", "busy-one", "--timeout", "30")
    try:
        wait_for(lambda: _connected(ops, "busy-one"), timeout=20, what="the wait to connect")
        ops.send("more", to="busy-one")
        got = w.answer()
    finally:
        w.proc.kill()
    assert got["kind"] == "message" and got["message"]["subject"] == "more"


def _connected(ops: Client, agent: str) -> bool:
    """The agent registered from the wait's connection (a message sent now is pushed to it)."""
    try:
        return ops.agent_info(agent)["implicit"] is False
    except Exception:
        return False
