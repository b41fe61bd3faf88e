"""``zmesh send``, ``assign``, ``read``, ``ack``, ``unacked``, ``dead-letters``, ``msgstats`` and
``group`` end to end, as real processes against a real broker: text and --json output,
every read filter, retention, exit codes; and exit 3 within the timeout when no broker
answers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import pytest

from zmesh import Client
from zmesh.cli._docs import JSON_SHAPES
from zmesh.testing import BrokerProcess, free_port

from .conftest import wait_for
from .test_cli import Cli


def keys(path: str, out: Any) -> None:
    expected = JSON_SHAPES[path]
    assert expected is not None and set(out) == set(expected[0]), (path, sorted(out))


@pytest.fixture
def z(broker: BrokerProcess) -> Cli:
    return Cli(broker.endpoint)


def subjects(z: Cli, *args: str) -> list[str]:
    return [m["subject"] for m in z.json("read", "--json", *args)["messages"]]


def test_send_and_every_read_filter(z: Cli) -> None:
    z.ok("agent", "idle", "--agent", "a")  # a live agent: a member of nothing yet
    keys("group join", z.json("group", "join", "g", "--agent", "a", "--json"))
    out = z.json("send", "one", "first body", "--to", "a", "--tag", "x", "--priority", "high", "--json")
    keys("send", out)
    assert (out["id"], out["addressed"], out["online"], out["queued"]) == ("msg-1", 1, 0, 1)
    assert z.ok("send", "two", "--group", "g", "--tag", "y").startswith("msg-2: addressed to 1 agent(s)")
    z.ok("send", "three", "--to", "a", "--tag", "x", "--tag", "y", "--priority", "low", "--json-body", '{"n": 3}')
    time.sleep(0.05)  # --since TIME below separates the fourth message by its send time
    cut = time.time()
    z.ok("send", "four", "--to", "b", "--from", "ops")
    assert subjects(z) == ["one", "two", "three", "four"]
    assert subjects(z, "--agent", "a", "--peek") == ["one", "two", "three"]
    assert subjects(z, "--group", "g") == ["two"]
    assert subjects(z, "--tag", "y") == ["two", "three"]
    assert subjects(z, "--priority", "low") == ["three"]
    assert subjects(z, "--since", "2") == ["three", "four"]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(cut)) + f"{cut % 1:.6f}"[1:]
    assert subjects(z, "--since", iso) == ["four"]
    assert subjects(z, "--since", "1h") == ["one", "two", "three", "four"]
    assert subjects(z, "--tail", "2") == ["three", "four"]
    assert subjects(z, "--filter", "^t") == ["two", "three"]
    assert subjects(z, "--filter", "first bo") == ["one"]  # the body too
    assert subjects(z, "--filter", "ops") == ["four"]  # and the sender
    assert subjects(z, "--filter", "^t", "--tail", "1") == ["three"]
    # --unread: reading (without --peek) marks what it printed; --peek changes nothing
    assert subjects(z, "--agent", "a", "--unread", "--peek") == ["one", "two", "three"]
    assert subjects(z, "--agent", "a", "--unread", "--tag", "x") == ["one", "three"]  # marks these two
    assert subjects(z, "--agent", "a", "--unread") == ["two"]
    assert subjects(z, "--agent", "a", "--unread") == []
    text = z.ok("read", "--agent", "a", "--peek")
    assert "msg-1" in text and "first body" in text and "read" in text
    z.fails(2, "read", "--unread", match="--unread")
    z.fails(2, "read", "--since", "yesterday", match="--since")
    z.fails(2, "read", "--filter", "(", match="--filter")
    z.fails(2, "send", "s", match="to")  # no address: the broker's bad_request, exit 2
    z.fails(2, "send", "s", "b", "--to", "a", "--json-body", "1", match="BODY")


def test_ack_unacked_dead_letters_and_msgstats(z: Cli, broker: BrokerProcess) -> None:
    worker = Client(broker.endpoint, agent="w")
    try:
        worker.connect()
        sent = z.json("send", "do it", "--to", "w", "--ack", "--max-deliver", "2", "--ack-wait", "0.3", "--json")
        wait_for(lambda: z.json("dead-letters", "--json")["dead"], what="a dead letter")
        keys("dead-letters", z.json("dead-letters", "--json"))
        assert z.ok("dead-letters").startswith(f"{sent['id']}\tw\tdeliveries=2")
        stats = z.json("msgstats", "--json")
        keys("msgstats", stats)
        assert stats["dead"] == 1 and stats["latency_ms"]["normal"]["n"] >= 1
        text = z.ok("msgstats")
        assert "dead letters: 1" in text
        assert "None" not in text and "critical  pending=0      delivery p50=- p95=- (n=0)" in text  # no sample yet
        worker.close()  # w goes away: what is requeued for it waits, pending
        assert z.ok("dead-letters", "--requeue", sent["id"]).strip() == f"{sent['id']} requeued for w"
        z.fails(1, "dead-letters", "--requeue", sent["id"], match="not a dead letter")
        out = z.json("unacked", "--json")
        keys("unacked", out)
        assert [(u["id"], u["agent"], u["state"]) for u in out["deliveries"]] == [(sent["id"], "w", "pending")]
        acked = z.json("ack", sent["id"], "--note", "looked at it", "--json")  # its only recipient: w
        keys("ack", acked)
        assert (acked["agent"], acked["note"], acked["already"]) == ("w", "looked at it", False)
        assert z.ok("ack", sent["id"]).strip() == f"{sent['id']} acked by w (already)"
        assert z.json("unacked", "--json")["deliveries"] == []
        z.fails(1, "ack", "msg-99", "--agent", "w", match="not_found")
        z.fails(2, "ack", "nonsense", "--agent", "w", match="msg-")
        worker = Client(broker.endpoint, agent="w")
        worker.connect()
        held = z.json("send", "again", "--to", "w", "--ack", "--ack-wait", "60", "--json")["id"]
        wait_for(lambda: z.json("unacked", "--json")["deliveries"], what="the delivery")
        z.fails(1, "ack", held, "--agent", "w", "--token", "1", match="stale_token")
        assert "acked by w" in z.ok("ack", held, "--agent", "w")
    finally:
        worker.close()


def test_assign_to_a_connected_agent_and_queued(z: Cli, broker: BrokerProcess) -> None:
    z.ok("task", "add", "t1")
    z.ok("task", "add", "t2")
    z.fails(1, "assign", "ghost", "t1", match="no live agent")
    worker = Client(broker.endpoint, agent="w")
    try:
        worker.connect()
        out = z.json("assign", "w", "t1", "--json")
        keys("assign", out)
        assert out["queued"] is False and z.show("t1")["owner"] == "w"
        msg = worker.receive(timeout=5)
        assert msg is not None and msg.claim is not None and msg.claim.token == out["token"]
        z.fails(1, "assign", "w", "t9", match="not_found")
    finally:
        worker.close()  # unregisters: w is no longer live
    assert "waits in later's inbox" in z.ok("assign", "later", "t2", "--queue")
    assert z.show("t2")["status"] == "available"


def test_retention_trims_at_the_configured_bound(tmp_path: Path,
                                                 broker_factory: Callable[..., BrokerProcess]) -> None:
    conf = tmp_path / "z.toml"
    conf.write_text("[broker]\nmessage_retention = 3\n")
    b = broker_factory(extra=("--config", str(conf)))
    z = Cli(b.endpoint)
    for i in range(6):
        z.ok("send", f"m{i}", "--to", "a")
    assert subjects(z) == ["m3", "m4", "m5"]
    assert z.json("msgstats", "--json")["messages"] == 3


def test_every_message_command_says_a_missing_broker_within_its_timeout() -> None:
    z = Cli(f"tcp://127.0.0.1:{free_port()}")
    for args in (["send", "s", "--to", "a"], ["assign", "a", "t"], ["read"], ["ack", "msg-1", "--agent", "a"],
                 ["unacked"], ["dead-letters"], ["msgstats"], ["group", "join", "g", "--agent", "a"]):
        start = time.monotonic()
        r = z("--timeout", "0.5", *args)
        assert r.returncode == 3, (args, r.returncode, r.stderr)
        assert r.stderr.count("\n") == 1 and "unreachable" in r.stderr.lower() or "no reply" in r.stderr
        assert time.monotonic() - start < 10
