"""End-to-end tests of the ``zmesh`` command: every command runs as a real subprocess
(``python -m zmesh ...``) against a real broker process on loopback, and the tests check
what a script sees: stdout, stderr and the exit code (0 ok, 1 refused or lost,
2 usage or invalid input, 3 broker unreachable).

Every process a test starts is stopped by PID: ``subprocess.run(timeout=...)`` kills its
child on timeout, brokers started here are stopped in ``finally``, and the ``broker``
fixture stops its broker (and fails the test if it does not exit 0 on SIGTERM)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from zmesh.testing import BrokerProcess, free_port

from .conftest import wait_for

CALL_TIMEOUT = 30.0


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any ZMESH_* setting (so no test depends on the caller's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZMESH_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str] | None = None,
        timeout: float = CALL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``python -m zmesh ARGS``; on timeout subprocess.run kills the child (by PID)."""
    return subprocess.run([sys.executable, "-m", "zmesh", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=clean_env() if env is None else env,
                          timeout=timeout)


class Cli:
    """The command bound to one broker with ``--broker``."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def __call__(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return run("--broker", self.endpoint, *args, **kw)

    def ok(self, *args: str) -> str:
        r = self(*args)
        assert r.returncode == 0, f"zmesh {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args))

    def fails(self, code: int, *args: str, match: str = "") -> subprocess.CompletedProcess[str]:
        r = self(*args)
        assert r.returncode == code, (f"zmesh {' '.join(args)} -> {r.returncode}, want {code}\n"
                                      f"{r.stdout}\n{r.stderr}")
        assert match in r.stderr, f"{match!r} not in stderr: {r.stderr!r}"
        return r

    def show(self, task_id: str) -> dict[str, Any]:
        return self.json("task", "show", task_id, "--json")


@pytest.fixture
def z(broker: BrokerProcess) -> Cli:
    return Cli(broker.endpoint)


def two_ports() -> tuple[int, int]:
    port = free_port()
    pub = free_port()
    while pub == port:
        pub = free_port()
    return port, pub


# ================================================================ zmesh broker
@contextmanager
def broker_process(tmp_path: Path, *extra: str) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """``zmesh broker`` with exactly the contract flags; its stdout+stderr go to a file.
    Stopped by PID at the end whatever happens (SIGKILL if still running)."""
    port, pub = two_ports()
    endpoint = f"tcp://127.0.0.1:{port}"
    log_path = tmp_path / "broker.log"
    cmd = [sys.executable, "-m", "zmesh", "broker", "--data", str(tmp_path / "data"),
           "--bind", endpoint, "--pub-bind", f"tcp://127.0.0.1:{pub}", "--no-discovery", *extra]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=clean_env())
    try:
        yield proc, endpoint, log_path
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _wait_ready(proc: subprocess.Popen, log_path: Path) -> str:
    def ready() -> str | None:
        text = log_path.read_text(errors="replace")
        assert proc.poll() is None, f"broker exited with {proc.returncode}:\n{text}"
        return text if "ready" in text else None
    return str(wait_for(ready, timeout=20, what="the broker's 'ready' line"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_broker_logs_ready_answers_status_and_exits_0_on_signal(tmp_path: Path, sig: int) -> None:
    with broker_process(tmp_path) as (proc, endpoint, log_path):
        text = _wait_ready(proc, log_path)
        ready_lines = [line for line in text.splitlines() if "ready" in line]
        assert len(ready_lines) == 1, text
        assert endpoint in ready_lines[0] and "durability=full" in ready_lines[0]

        status = Cli(endpoint).json("status", "--json")
        assert status["pid"] == proc.pid
        assert status["durability"] == "full"  # the default: no --durability was given
        assert endpoint in status["endpoints"]
        assert status["data"] == str(tmp_path / "data")

        proc.send_signal(sig)
        assert proc.wait(10) == 0, log_path.read_text()
        assert "stopped" in log_path.read_text()
        r = Cli(endpoint)("--timeout", "0.5", "status")
        assert r.returncode == 3, "the broker is really gone"


def test_second_broker_on_the_same_data_dir_fails_clearly(broker: BrokerProcess) -> None:
    port, pub = two_ports()
    r = run("broker", "--data", str(broker.data), "--bind", f"tcp://127.0.0.1:{port}",
            "--pub-bind", f"tcp://127.0.0.1:{pub}", "--no-discovery")
    assert r.returncode not in (0, None), r
    assert "in use" in r.stderr and str(broker.data) in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    # the first broker is unharmed
    assert Cli(broker.endpoint).json("status", "--json")["durability"] == "full"


def test_broker_unknown_durability_is_a_usage_error(tmp_path: Path) -> None:
    port, pub = two_ports()
    r = run("broker", "--data", str(tmp_path / "data"), "--bind", f"tcp://127.0.0.1:{port}",
            "--pub-bind", f"tcp://127.0.0.1:{pub}", "--no-discovery", "--durability", "paranoid")
    assert r.returncode == 2, r
    assert "--durability" in r.stderr and "paranoid" in r.stderr, r.stderr


# ================================================================ task add / show
def test_add_with_every_option_then_show(z: Cli) -> None:
    line = z.ok("task", "add", "dep1")
    assert line.split("\t")[:2] == ["dep1", "available"]
    z.ok("task", "add", "dep2")
    rec = z.json("task", "add", "job", "--type", "render", "--data", '{"frame": 7, "tags": ["a"]}',
                 "--priority", "42", "--requires", "gpu", "--requires", "cuda",
                 "--max-attempts", "5", "--depends-on", "dep1", "--depends-on", "dep2", "--json")
    assert rec["id"] == "job" and rec["status"] == "waiting"

    t = z.show("job")
    for key in ("id", "status", "owner", "token", "attempts", "result", "data", "priority",
                "requires", "depends_on", "history"):
        assert key in t, key
    assert t["id"] == "job"
    assert t["type"] == "render"
    assert t["data"] == {"frame": 7, "tags": ["a"]}
    assert t["priority"] == 42
    assert t["requires"] == ["gpu", "cuda"]
    assert t["max_attempts"] == 5
    assert t["depends_on"] == ["dep1", "dep2"]
    assert (t["status"], t["owner"], t["token"], t["attempts"], t["result"], t["history"]) == \
        ("waiting", None, None, 0, None, [])

    # defaults
    d = z.show("dep1")
    assert (d["type"], d["data"], d["priority"], d["requires"], d["max_attempts"], d["depends_on"]) == \
        ("task", None, 0, [], 3, [])

    # the human form of show names the same things
    human = z.ok("task", "show", "job")
    assert human.startswith("job\twaiting\tprio=42\tattempts=0")
    assert "type=render requires=gpu,cuda depends_on=dep1,dep2 max_attempts=5" in human
    assert 'data={"frame":7,"tags":["a"]}' in human

    z.fails(1, "task", "add", "job", match="conflict")  # the id exists
    z.fails(1, "task", "add", "orphan", "--depends-on", "nope", match="not_found")


# ================================================================ claim / done
def test_claim_prints_the_token_and_a_second_agent_gets_conflict(z: Cli) -> None:
    z.ok("task", "add", "a")
    z.ok("task", "add", "b")
    out = z.ok("task", "claim", "a", "--agent", "w1")
    assert out.strip().isdigit(), out  # just the token
    token = int(out)
    t = z.show("a")
    assert (t["status"], t["owner"], t["token"]) == ("claimed", "w1", token)

    r = z.fails(1, "task", "claim", "a", "--agent", "w2", match="conflict")
    assert "w1" in r.stderr and r.stdout == ""
    assert z.show("a")["owner"] == "w1", "a refused claim changes nothing"

    c = z.json("task", "claim", "b", "--agent", "w2", "--json")
    assert c["task"] == "b" and c["agent"] == "w2"
    assert isinstance(c["token"], int) and c["token"] > token
    assert "expires_in" in c and "lease" in c  # the key task show uses too

    # --json before the subcommand
    t = z.json("--json", "task", "show", "b")
    assert (t["id"], t["owner"], t["token"]) == ("b", "w2", c["token"])

    z.fails(1, "task", "claim", "ghost", "--agent", "w1", match="not_found")


def test_done_with_result_stale_token_and_not_owner(z: Cli) -> None:
    z.ok("task", "add", "a")
    t1 = int(z.ok("task", "claim", "a", "--agent", "w1"))
    z.ok("task", "release", "a", "--agent", "w1", "--token", str(t1))
    t2 = int(z.ok("task", "claim", "a", "--agent", "w1"))
    assert t2 > t1

    z.fails(1, "task", "done", "a", "--agent", "w1", "--token", str(t1), match="stale_token")
    z.fails(1, "task", "done", "a", "--agent", "w2", match="not_owner")
    z.fails(1, "task", "done", "a", "--agent", "w2", "--token", str(t2), match="not_owner")
    t = z.show("a")
    assert (t["status"], t["owner"], t["token"], t["result"]) == ("claimed", "w1", t2, None)

    out = z.ok("task", "done", "a", "--agent", "w1", "--token", str(t2),
               "--result", '{"ok": true, "n": [1, 2]}')
    assert out.startswith("a\tcompleted"), out
    t = z.show("a")
    assert t["status"] == "completed" and t["owner"] is None
    assert t["result"] == {"ok": True, "n": [1, 2]}
    assert "result=" in z.ok("task", "show", "a")

    # done without --token by the owner, and --json output
    z.ok("task", "add", "b")
    z.ok("task", "claim", "b", "--agent", "w3")
    rec = z.json("task", "done", "b", "--agent", "w3", "--json")
    assert rec["status"] == "completed" and rec["result"] is None


# ================================================================ fail / release
def test_fail_records_the_error_and_max_attempts_1_makes_it_dead(z: Cli) -> None:
    z.ok("task", "add", "once", "--max-attempts", "1")
    token = int(z.ok("task", "claim", "once", "--agent", "w1"))
    out = z.ok("task", "fail", "once", "--agent", "w1", "--token", str(token),
               "--error", "disk full on /dev/sda")
    assert out.startswith("once\tdead"), out
    t = z.show("once")
    assert (t["status"], t["attempts"], t["owner"]) == ("dead", 1, None)
    [entry] = t["history"]
    assert (entry["event"], entry["agent"], entry["error"]) == ("failed", "w1", "disk full on /dev/sda")
    assert "disk full on /dev/sda" in z.ok("task", "show", "once")
    z.fails(1, "task", "claim", "once", "--agent", "w1", match="conflict")

    # with attempts left the task goes back to the pool; fail needs --error and the owner
    z.ok("task", "add", "twice", "--max-attempts", "2")
    z.ok("task", "claim", "twice", "--agent", "w1")
    z.fails(1, "task", "fail", "twice", "--agent", "w2", "--error", "x", match="not_owner")
    rec = z.json("task", "fail", "twice", "--agent", "w1", "--error", "flaky", "--json")
    assert (rec["status"], rec["attempts"]) == ("available", 1)
    assert [h["error"] for h in z.show("twice")["history"]] == ["flaky"]
    z.ok("task", "claim", "twice", "--agent", "w2")
    z.ok("task", "fail", "twice", "--agent", "w2", "--error", "flaky again")
    t = z.show("twice")
    assert (t["status"], t["attempts"]) == ("dead", 2)
    assert [h["error"] for h in t["history"]] == ["flaky", "flaky again"]


def test_release_makes_the_task_available(z: Cli) -> None:
    z.ok("task", "add", "r")
    token = int(z.ok("task", "claim", "r", "--agent", "w1"))
    z.fails(1, "task", "release", "r", "--agent", "w2", match="not_owner")
    z.fails(1, "task", "release", "r", "--agent", "w1", "--token", str(token + 1000),
            match="stale_token")
    out = z.ok("task", "release", "r", "--agent", "w1", "--token", str(token))
    assert out.startswith("r\tavailable"), out
    t = z.show("r")
    assert (t["status"], t["owner"], t["token"], t["attempts"]) == ("available", None, None, 0)
    assert int(z.ok("task", "claim", "r", "--agent", "w2")) > token
    rec = z.json("task", "release", "r", "--agent", "w2", "--json")
    assert rec["status"] == "available"


# ================================================================ ls / next
def test_ls_status_claimed_lists_exactly_the_claimed_ones(z: Cli) -> None:
    for tid in ("t1", "t2", "t3", "t4", "t5"):
        z.ok("task", "add", tid)
    z.ok("task", "claim", "t2", "--agent", "w1")
    z.ok("task", "claim", "t4", "--agent", "w2")
    z.ok("task", "claim", "t5", "--agent", "w1")
    z.ok("task", "done", "t5", "--agent", "w1")

    claimed = z.json("task", "ls", "--status", "claimed", "--json")["tasks"]
    assert [(t["id"], t["owner"]) for t in claimed] == [("t2", "w1"), ("t4", "w2")]
    assert [t["id"] for t in z.json("task", "ls", "--status", "available", "--json")["tasks"]] == ["t1", "t3"]
    assert [t["id"] for t in z.json("task", "ls", "--status", "completed", "--json")["tasks"]] == ["t5"]
    assert z.json("task", "ls", "--status", "dead", "--json") == {"tasks": [], "more": False, "next_after": None}
    everything = z.json("--json", "task", "ls")
    assert [t["id"] for t in everything["tasks"]] == ["t1", "t2", "t3", "t4", "t5"]
    assert everything["more"] is False and everything["next_after"] is None

    human = z.ok("task", "ls", "--status", "claimed").splitlines()
    assert [line.split("\t")[0] for line in human] == ["t2", "t4"]
    assert "owner=w1" in human[0]


def test_next_respects_capabilities_and_priority(z: Cli) -> None:
    z.ok("task", "add", "low", "--priority", "1")
    z.ok("task", "add", "mid", "--priority", "5")
    z.ok("task", "add", "gpu", "--priority", "10", "--requires", "gpu")
    z.ok("task", "add", "both", "--priority", "20", "--requires", "gpu", "--requires", "cuda")

    # no capabilities: the best task that needs none
    n = z.json("task", "next", "--agent", "plain", "--json")
    assert n["task"] == "mid" and n["agent"] == "plain" and isinstance(n["token"], int)
    assert n["record"]["status"] == "claimed" and n["record"]["owner"] == "plain"
    assert z.show("mid")["token"] == n["token"]

    # gpu alone does not cover "both"; gpu + cuda does, and it has the higher priority
    out = z.ok("task", "next", "--agent", "g", "--capability", "gpu")
    tid, token = out.split()
    assert tid == "gpu" and z.show("gpu")["token"] == int(token)
    n = z.json("task", "next", "--agent", "gc", "--capability", "gpu", "--capability", "cuda", "--json")
    assert n["task"] == "both"

    assert z.json("task", "next", "--agent", "plain", "--json")["task"] == "low"
    z.fails(1, "task", "next", "--agent", "plain", match="no available task")
    r = z.fails(1, "task", "next", "--agent", "plain", "--capability", "gpu", "--json")
    assert r.stdout == "" and json.loads(r.stderr)["code"] == "nothing_to_claim"  # like a lost claim
    assert z.json("task", "ls", "--status", "available", "--json")["tasks"] == []


def test_depends_on_waits_until_every_dependency_is_done(z: Cli) -> None:
    z.ok("task", "add", "d1")
    z.ok("task", "add", "d2")
    z.ok("task", "add", "child", "--depends-on", "d1", "--depends-on", "d2", "--priority", "9")
    assert z.show("child")["status"] == "waiting"
    z.fails(1, "task", "claim", "child", "--agent", "w1", match="conflict")
    assert [t["id"] for t in z.json("task", "ls", "--status", "waiting", "--json")["tasks"]] == ["child"]

    z.ok("task", "claim", "d1", "--agent", "w1")
    z.ok("task", "done", "d1", "--agent", "w1")
    assert z.show("child")["status"] == "waiting", "d2 is not done yet"
    z.ok("task", "claim", "d2", "--agent", "w1")
    z.ok("task", "fail", "d2", "--agent", "w1", "--error", "nope")
    assert z.show("child")["status"] == "waiting", "a failed dependency is not done"
    z.ok("task", "claim", "d2", "--agent", "w1")
    z.ok("task", "done", "d2", "--agent", "w1")
    assert z.show("child")["status"] == "available"
    assert z.json("task", "next", "--agent", "w2", "--json")["task"] == "child"

    # a dependency already completed does not make the task wait
    z.ok("task", "add", "late", "--depends-on", "d1")
    assert z.show("late")["status"] == "available"


def test_claim_ttl_lapses_and_the_task_is_claimable_again(z: Cli) -> None:
    z.ok("task", "add", "keep")
    z.ok("task", "add", "short")
    z.ok("task", "claim", "keep", "--agent", "w1")  # w1 now has a 30 s lease of its own
    c = z.json("task", "claim", "short", "--agent", "w1", "--ttl", "1", "--json")
    t = z.show("short")
    assert t["owner"] == "w1" and t["expires_in"] is not None and t["expires_in"] <= 1.0

    start = time.monotonic()
    wait_for(lambda: z.show("short")["status"] == "available", timeout=10, interval=0.1,
             what="the 1 s claim to lapse")
    assert time.monotonic() - start < 5
    t = z.show("short")
    keep = z.show("keep")
    assert t["owner"] is None
    # the claim's own TTL ended it, not w1's lease (30 s, renewed by every request of w1)
    assert [(h["event"], h["token"]) for h in t["history"]] == [("claim_expired", c["token"])], \
        (t["history"], keep)
    assert keep["owner"] == "w1", "only the claim with the TTL lapsed"

    token = int(z.ok("task", "claim", "short", "--agent", "w2"))
    assert token > c["token"]
    # a lapsed claim says so, not "stale token" (finding 9), and names the new holder
    r = z.fails(1, "task", "done", "short", "--agent", "w1", "--token", str(c["token"]),
                match="claim_expired")
    assert "TTL ran out" in r.stderr and "'w2' holds it now" in r.stderr
    z.ok("task", "done", "short", "--agent", "w2", "--token", str(token))


# ================================================================ exit codes
def test_invalid_input_is_exit_2_and_changes_nothing(z: Cli) -> None:
    z.ok("task", "add", "a")
    token = z.ok("task", "claim", "a", "--agent", "w1").strip()
    seq = z.json("status", "--json")["seq"]

    r = z.fails(2, "task", "add", "bad", "--data", "{not json", match="--data")
    assert "JSON" in r.stderr
    z.fails(1, "task", "show", "bad", match="not_found")
    r = z.fails(2, "task", "done", "a", "--agent", "w1", "--token", token, "--result", "[1,",
                match="--result")
    assert "JSON" in r.stderr
    z.fails(2, "task", "claim", "a", match="--agent")          # missing required option
    z.fails(2, "task", "fail", "a", "--agent", "w1", match="--error")
    z.fails(2, "task", "ls", "--status", "sleeping", match="--status")
    z.fails(2, "task", "add", "p", "--priority", "high", match="--priority")
    z.fails(2, "task", "add", "m", "--max-attempts", "0", match="--max-attempts")

    t = z.show("a")
    assert (t["status"], t["owner"], t["result"]) == ("claimed", "w1", None)
    assert z.json("status", "--json")["seq"] == seq, "no usage error reached the broker"


def test_show_of_an_unknown_task_is_exit_1(z: Cli) -> None:
    r = z.fails(1, "task", "show", "nope", "--json", match="not_found")
    assert "nope" in r.stderr and r.stdout == ""


@pytest.mark.parametrize("args", [
    ("status", "--json"),
    ("task", "show", "x", "--json"),
    ("task", "add", "x"),
    ("task", "claim", "x", "--agent", "w1"),
    ("events", "--since", "0", "--count", "1"),
], ids=lambda a: " ".join(a[:2]))
def test_unreachable_broker_is_exit_3_within_seconds(args: tuple[str, ...]) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    r = run("--broker", endpoint, "--timeout", "0.5", *args, timeout=15)
    elapsed = time.monotonic() - start
    assert r.returncode == 3, r
    assert "unreachable" in r.stderr and endpoint in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stdout == ""
    assert elapsed < 4.0, f"took {elapsed:.1f} s with --timeout 0.5"


def test_zmesh_broker_env_instead_of_broker_flag(broker: BrokerProcess) -> None:
    env = clean_env(ZMESH_BROKER=broker.endpoint)
    r = run("task", "add", "e1", env=env)
    assert r.returncode == 0, r
    r = run("--json", "task", "show", "e1", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["id"] == "e1", r
    # --broker wins over the environment
    dead = clean_env(ZMESH_BROKER=f"tcp://127.0.0.1:{free_port()}")
    r = run("--broker", broker.endpoint, "task", "show", "e1", "--json", env=dead)
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "available", r
    # and the environment really is used: a dead one there is unreachable
    r = run("--timeout", "0.5", "status", env=dead, timeout=15)
    assert r.returncode == 3 and "unreachable" in r.stderr, r


# ================================================================ status / events
def test_status_json_counts_agents_seq_and_durability(z: Cli) -> None:
    for tid in ("s1", "s2", "s3", "s4"):
        z.ok("task", "add", tid)
    z.ok("task", "add", "s5", "--depends-on", "s4")
    z.ok("task", "claim", "s1", "--agent", "a1")
    z.ok("task", "claim", "s2", "--agent", "a2")
    z.ok("task", "done", "s2", "--agent", "a2")

    s = z.json("status", "--json")
    assert s["tasks"] == {"waiting": 1, "available": 2, "claimed": 1, "completed": 1, "dead": 0}
    assert s["agents"] == 2
    assert sorted(a["id"] for a in s["agent_list"]) == ["a1", "a2"]
    assert s["claims"] == 1
    assert s["durability"] == "full"
    # 5 created + 2 agents registered + 2 claimed (each agent.busy) + 1 completed (agent.completed)
    assert s["seq"] == 13
    events = [json.loads(line) for line in
              z.ok("events", "--since", "0", "--count", str(s["seq"]), "--json").splitlines()]
    assert events[-1]["seq"] == s["seq"]

    human = z.ok("status")
    assert "durability=full" in human and f"seq={s['seq']}" in human
    assert "claimed=1" in human and "completed=1" in human


def test_events_since_0_count_k_json(z: Cli) -> None:
    z.ok("task", "add", "e1")
    z.ok("task", "add", "e2")
    z.ok("task", "claim", "e1", "--agent", "w1")
    z.ok("task", "done", "e1", "--agent", "w1")
    # task.created x2, agent.registered, task.claimed, agent.busy, task.completed, agent.completed
    lines = z.ok("events", "--since", "0", "--count", "4", "--json").splitlines()
    assert len(lines) == 4
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert [e["topic"] for e in events] == ["task.created", "task.created", "agent.registered",
                                            "task.claimed"]
    assert events[0]["body"]["task_id"] == "e1" and events[3]["body"]["claimed_by"] == "w1"

    # --since skips what came before; --topic filters; --json before the command
    lines = z.ok("--json", "events", "--since", "2", "--topic", "task.", "--count", "2").splitlines()
    assert [(json.loads(x)["seq"], json.loads(x)["topic"]) for x in lines] == \
        [(4, "task.claimed"), (6, "task.completed")]

    # human format: seq, topic, body
    seq, topic, body = z.ok("events", "--since", "5", "--count", "1").rstrip("\n").split("\t")
    assert (seq, topic, json.loads(body)["task_id"]) == ("6", "task.completed", "e1")

    # --idle-timeout: everything there is, then exit 0 once quiet
    start = time.monotonic()
    lines = z.ok("events", "--since", "0", "--idle-timeout", "0.5", "--json").splitlines()
    assert [json.loads(x)["seq"] for x in lines] == [1, 2, 3, 4, 5, 6, 7]
    assert time.monotonic() - start < 10


def test_publish_then_events_shows_the_message(z: Cli) -> None:
    out = z.ok("publish", "deploy.done", "--data", '{"sha": "abc"}', "--agent", "ci")
    assert out.strip() == "published msg.deploy.done seq=1"
    assert z.json("publish", "deploy.done", "--json") == {"topic": "msg.deploy.done", "seq": 2}
    lines = z.ok("events", "--since", "0", "--topic", "msg.", "--count", "2", "--json").splitlines()
    got = [json.loads(x) for x in lines]
    assert [(e["seq"], e["topic"], e["body"]["data"], e["body"]["from"]) for e in got] == \
        [(1, "msg.deploy.done", {"sha": "abc"}, "ci"), (2, "msg.deploy.done", None, None)]
    z.fails(2, "publish", "bad topic", match="TOPIC")
    z.fails(2, "publish", "t", "--data", "{nope", match="not valid JSON")


def _readline(p: subprocess.Popen, timeout: float) -> str:
    """One line of ``p``'s stdout, or fail after ``timeout`` s (never block the test)."""
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    assert ready, f"no output line within {timeout} s"
    return p.stdout.readline()  # type: ignore[union-attr]


def test_events_follows_new_events_live_line_by_line(z: Cli) -> None:
    z.ok("task", "add", "f1")
    seq = z.json("status", "--json")["seq"]
    cmd = [sys.executable, "-m", "zmesh", "--broker", z.endpoint, "events", "--since", str(seq),
           "--topic", "task.", "--count", "2", "--json"]
    env = clean_env()
    del env["PYTHONUNBUFFERED"]  # stdout is a pipe: each event must still come out at once
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL, env=env)
    try:
        z.ok("task", "claim", "f1", "--agent", "w1")  # agent.registered is filtered out
        first = json.loads(_readline(p, CALL_TIMEOUT))  # before the second event exists
        assert first["topic"] == "task.claimed" and first["seq"] > seq
        assert p.poll() is None, "--count 2: still following"
        z.ok("task", "release", "f1", "--agent", "w1")
        out, err = p.communicate(timeout=CALL_TIMEOUT)
        assert p.returncode == 0, err
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(10)
    [second] = [json.loads(line) for line in out.splitlines()]
    assert second["topic"] == "task.released" and second["seq"] > first["seq"]
    assert second["body"]["reason"] == "released" and second["body"]["task_id"] == "f1"


def test_a_misspelled_zmesh_variable_is_warned_about_with_the_name_meant() -> None:
    r = run("--broker", "tcp://127.0.0.1:1", "config", "show", env=clean_env(ZMESH_DEFUALT_TTL="5"))
    assert "ZMESH_DEFUALT_TTL is not a zmesh setting (a typo? did you mean ZMESH_DEFAULT_TTL?)" in r.stderr, r.stderr


def test_an_integer_option_and_a_missing_address_are_named_as_the_cli_names_them() -> None:
    """--priority nan said "'nan' is not a valid integer range"; zmesh send with no address went
    to the broker and came back naming the wire's fields (found in the new-user trial)."""
    for value in ("nan", "1.5", "ten"):
        r = run("--broker", "tcp://127.0.0.1:1", "task", "add", "x", "--priority", value)
        assert r.returncode == 2 and f"'{value}' is not an integer" in r.stderr, r.stderr
    r = run("--broker", "tcp://127.0.0.1:1", "--timeout", "1", "send", "hi")
    assert r.returncode == 2, r.stderr  # refused before anything is sent: no broker is needed to say so
    assert "--to AGENT, --group, --capability or --all" in r.stderr
