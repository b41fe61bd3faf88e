"""The durable write path: SIGKILL of the broker under claim, message and reservation load
loses no acknowledged write, at every durability level (a broker crash loses nothing at any
level; only an OS crash tells them apart).

Three child processes (tests/durability_load.py) each create and claim tasks, send messages
to an inbox address and reserve paths, logging every write only once its reply came back.
When a few hundred acks are logged the broker is killed with SIGKILL; the children meet
Unreachable and exit; the broker is started again on the same data directory. Then every
logged write must be there as it was answered: the claim with its owner and fencing token,
the message in its recipient's inbox, the reservation with its holder and token, and the
events that said so. Fencing tokens and event seqs keep increasing across the crash.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from zmesh import Client
from zmesh.testing import BrokerProcess

from .conftest import Procs, wait_for
from .durability_load import inbox

WORKERS = 3
#: iterations a child may run: far more than it gets through before the kill (the bound
#: that ends a child whose broker never goes away)
MOST = 5000
#: acked claims, acked messages and acked reservations (each, over all children) before the kill
THRESHOLD = 150
#: acked claims each child has logged before the kill: every child is under way
PER_CHILD = 20
CHILD = "from tests.durability_load import main; main()"


@dataclass
class Acks:
    """What the children's logs say the broker acknowledged."""

    creates: list[str] = field(default_factory=list)
    claims: list[tuple[str, str, int]] = field(default_factory=list)  # task, agent, token
    sends: list[tuple[str, str, int, int]] = field(default_factory=list)  # agent, id, seq, i
    reserves: list[tuple[str, str, int]] = field(default_factory=list)  # pattern, agent, token
    per_agent: dict[str, int] = field(default_factory=dict)  # acked claims per child


def _read(logs: dict[str, Path]) -> Acks:
    """Complete lines only: a line being written when the log is read is left for later."""
    acks = Acks()
    for agent, path in logs.items():
        acks.per_agent[agent] = 0
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").split("\n")[:-1]:
            kind, *rest = line.split()
            if kind == "create":
                acks.creates.append(rest[0])
            elif kind == "claim":
                acks.claims.append((rest[0], rest[1], int(rest[2])))
                acks.per_agent[agent] += 1
            elif kind == "send":
                acks.sends.append((agent, rest[0], int(rest[1]), int(rest[2])))
            elif kind == "reserve":
                acks.reserves.append((rest[0], rest[1], int(rest[2])))
            else:
                raise AssertionError(f"unknown line in {path}: {line!r}")
    return acks


def _config(tmp_path: Path) -> tuple[str, ...]:
    """Every message kept (no inbox trimming can pass for a lost write)."""
    path = tmp_path / "zmesh.toml"
    path.write_text("[broker]\nmessage_retention = 1000000\n")
    return ("--config", str(path))


def _all_tasks(admin: Client) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    after = ""
    while True:
        page = admin.task_page(after=after, limit=10_000)
        tasks.update((t["id"], t) for t in page["tasks"])
        if not page["more"] or not page["tasks"]:
            return tasks
        after = page["tasks"][-1]["id"]


def _inbox(admin: Client, address: str) -> dict[str, Any]:
    """The recipient's inbox, every page (a peek: nothing is marked read)."""
    stored: dict[str, Any] = {}
    since = 0
    while True:
        page = admin.message_page(agent=address, since=since, limit=10_000)
        stored.update((m["id"], m) for m in page["messages"])
        if not page["more"]:
            return stored
        since = page["last"]


def _all_events(admin: Client) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    since = 0
    while True:
        page = admin.replay(since, limit=10_000)
        events += page["events"]
        if not page["more"] or not page["events"]:
            return events
        since = page["events"][-1]["seq"]


def _start_children(procs: Procs, broker: BrokerProcess, logs: dict[str, Path]) -> list[subprocess.Popen]:
    children = [procs.python(CHILD, broker.endpoint, str(broker.pid), agent, str(path), str(MOST))
                for agent, path in logs.items()]
    for p in children:  # connected and registered, then all start at once
        assert p.stdout is not None and p.stderr is not None
        line = p.stdout.readline().strip()
        assert line == "ready", f"child did not start: {line!r}\n{p.stderr.read()}"
    for p in children:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    return children


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["full", "fast", "none"])
def test_broker_sigkill_under_claim_message_and_reservation_load_loses_no_acknowledged_write(
        broker_factory: Callable[..., BrokerProcess], procs: Procs, tmp_path: Path, durability: str) -> None:
    broker = broker_factory(durability=durability, extra=_config(tmp_path))
    agents = [f"w{k}" for k in range(WORKERS)]
    logs = {agent: tmp_path / f"{agent}.acks" for agent in agents}
    with Client(broker.endpoint, timeout=10) as admin:
        before = admin.status()
        assert before["durability"] == durability
        children = _start_children(procs, broker, logs)

        def loaded() -> bool:
            for p in children:  # a child that ended before the kill fails the test here, saying why
                if p.poll() is not None:
                    out, err = p.communicate(timeout=10)
                    raise AssertionError(f"a child ended before the kill ({p.returncode}): {out}\n{err}")
            acks = _read(logs)
            return (min(len(acks.claims), len(acks.sends), len(acks.reserves)) >= THRESHOLD
                    and min(acks.per_agent.values()) >= PER_CHILD)

        wait_for(loaded, timeout=60, interval=0.01, what=f"{THRESHOLD} acks of each kind")
        seen_by_admin = admin.status()["seq"]  # the parent is a client too: the last seq it saw
        broker.kill()  # SIGKILL in the middle of the load

        ends = []
        for p in children:  # each meets Unreachable (its timeout) and exits on its own
            out, err = p.communicate(timeout=30)
            assert p.returncode == 0, f"child exited with {p.returncode}:\n{err}"
            ends.append(out.split()[-3:])
        assert all(end[0] == "cut" for end in ends), f"every child was cut by the kill mid-load: {ends}"
        acks = _read(logs)
        assert len(acks.claims) >= THRESHOLD and len(acks.sends) >= THRESHOLD and len(acks.reserves) >= THRESHOLD
        max_seen_seq = max([seen_by_admin] + [seq for _, _, seq, _ in acks.sends])

        for agent in agents:  # as each child saw them, the seqs never went back
            seqs_seen = [seq for sender, _, seq, _ in acks.sends if sender == agent]
            assert seqs_seen == sorted(seqs_seen), f"{agent} saw the event seq go back"

        broker.start()  # the same data directory, the same ports
        restarted = admin.status()
        seq_at_restart = restarted["seq"]  # before any new write
        assert (restarted["broker_id"], restarted["durability"]) == (before["broker_id"], durability)
        assert restarted["pid"] == broker.pid != before["pid"], "a new broker process, on the old data"

        # claims: every acked one, with its owner and token; no claim by anyone but its task's agent
        tasks = _all_tasks(admin)
        lost_tasks = [task for task in acks.creates if task not in tasks]
        assert not lost_tasks, f"{len(lost_tasks)} acknowledged task creations lost: {lost_tasks[:5]}"
        for task, agent, token in acks.claims:
            t = tasks.get(task)
            got = None if t is None else (t["status"], t["owner"], t["token"])
            assert got == ("claimed", agent, token), f"acknowledged claim of {task} by {agent} ({token}) lost: {got}"
        claimed = {tid: t for tid, t in tasks.items() if t["status"] == "claimed"}
        assert all(tid.startswith(f"{t['owner']}-t") for tid, t in claimed.items()), "a claim with a wrong owner"

        # messages: every acked send is in its recipient's inbox, as sent
        assert len({mid for _, mid, _, _ in acks.sends}) == len(acks.sends), "every send got its own id"
        for agent in agents:
            stored = _inbox(admin, inbox(agent))
            for sender, mid, _, i in (s for s in acks.sends if s[0] == agent):
                m = stored.get(mid)
                assert m is not None, f"acknowledged message {mid} from {sender} lost"
                assert (m["from"], m["to"], m["subject"], m["body"]) == (
                    sender, {"kind": "agent", "name": inbox(agent)}, "load", {"agent": sender, "i": i}), m

        # reservations: every acked one, with its holder and token
        held = admin.reservations()
        by_key = {(r["pattern"], r["agent"]): r for r in held}
        for pattern, agent, token in acks.reserves:
            r = by_key.get((pattern, agent))
            got_r = None if r is None else (r["mode"], r["token"])
            assert got_r == ("exclusive", token), f"acknowledged reservation {pattern} of {agent} ({token}) lost: {got_r}"
        assert all(r["pattern"].startswith(f"{r['agent']}/") for r in held), "a reservation with a wrong holder"

        # fencing tokens: one store-wide counter, unique among what is held, and increasing across the crash
        current = [t["token"] for t in claimed.values()] + [r["token"] for r in held]
        assert len(set(current)) == len(current), "a fencing token is held twice"
        max_acked_token = max([tok for _, _, tok in acks.claims] + [tok for _, _, tok in acks.reserves])
        assert admin.status()["token"] >= max_acked_token, "the token counter went back"
        admin.create_task("after-restart")
        claim = admin.claim("after-restart", agent="checker")
        assert claim is not None and claim.token > max_acked_token, "a new claim reuses an acked token"
        reserved = admin.reserve(["after/**"], agent="checker")["reservations"][0]
        assert reserved["token"] > claim.token

        # event seqs: nothing any client saw is lost, and a new write goes above it all
        assert seq_at_restart >= max_seen_seq, f"seq {seq_at_restart} after the restart < {max_seen_seq} seen"
        seq_after_writes = admin.status()["seq"]
        assert seq_after_writes > seq_at_restart, "the new claim and reservation are events above the restart's seq"
        published = admin.publish("after-restart", {"ok": True})
        assert published > seq_after_writes > max_seen_seq
        events = _all_events(admin)
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(1, len(seqs) + 1)) and seqs[-1] == published, "event seqs are gap-free"
        claimed_events = {(e["body"]["task_id"], e["body"]["claimed_by"], e["body"]["token"])
                          for e in events if e["topic"] == "task.claimed"}
        missing = [c for c in acks.claims if c not in claimed_events]
        assert not missing, f"{len(missing)} acknowledged claims have no task.claimed event: {missing[:5]}"
        granted_events = {(e["body"]["pattern"], e["body"]["agent"], e["body"]["token"])
                          for e in events if e["topic"] == "reservation.granted"}
        missing = [r for r in acks.reserves if r not in granted_events]
        assert not missing, f"{len(missing)} acknowledged reservations have no event: {missing[:5]}"
