"""Messages over real sockets against a real broker process: push, ack and redelivery (also
across a broker SIGKILL), dead letters, assign, request/reply, receivers, and a subscriber
whose SUB connection is cut while events flow. Both client drivers (make_client)."""

from __future__ import annotations

import queue
import socket
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from zmesh import Client
from zmesh.errors import InvalidArgument, NoReply, StaleToken
from zmesh.testing import BrokerProcess

from .conftest import wait_for


def _config(tmp_path: Path, **settings: Any) -> tuple[str, ...]:
    path = tmp_path / "zmesh.toml"
    path.write_text("[broker]\n" + "".join(f"{k} = {v!r}\n" for k, v in settings.items()))
    return ("--config", str(path))


def test_requires_ack_offline_delivery_redelivery_restart_stale_ack_and_dead_letters(
        broker_factory: Callable[..., BrokerProcess], make_client: Any, tmp_path: Path) -> None:
    b = broker_factory(extra=_config(tmp_path, ack_wait=0.5))
    ops = make_client(b.endpoint)
    sent = ops.send("deploy", {"v": 2}, to="worker", requires_ack=True, max_deliver=50, priority="high")
    assert (sent["addressed"], sent["online"], sent["queued"]) == (1, 0, 1)  # offline: it waits
    worker = make_client(b.endpoint, agent="worker", ttl=3.0)
    first = worker.receive(timeout=5)
    assert first is not None and (first.id, first.subject, first.body, first.attempt) == (sent["id"], "deploy",
                                                                                        {"v": 2}, 1)
    second = worker.receive(timeout=5)  # not acked within ack_wait (the broker's 0.5 s): again
    assert second is not None and second.id == sent["id"] and second.attempt == 2
    assert second.token > first.token
    with pytest.raises(StaleToken):
        worker.ack(first)
    assert worker.ack(sent["id"], note="deployed")["already"] is False  # no token: the current delivery
    rec = ops.message(sent["id"])["recipients"][0]
    assert (rec["state"], rec["note"]) == ("acked", "deployed")
    while worker.receive(timeout=0.3) is not None:  # deliveries that raced the ack
        pass
    # a delivery awaiting its ack survives SIGKILL and goes again after the restart
    held = ops.send("migrate", to="worker", requires_ack=True, ack_wait=60.0)["id"]
    before = worker.receive(timeout=5)
    assert before is not None and before.id == held and before.attempt == 1
    b.kill()
    b.start()
    after = worker.receive(timeout=10)  # the worker's first heartbeat attaches it again
    assert after is not None and after.id == held and after.attempt == 2 and after.token > before.token
    with pytest.raises(StaleToken):
        worker.ack(before)
    assert worker.ack(after)["already"] is False
    # max_deliver: never acked -> dead letter -> requeued -> delivered from attempt 1
    dead = ops.send("poison", to="worker", requires_ack=True, max_deliver=2, ack_wait=0.3)["id"]
    wait_for(lambda: ops.dead_letters(), timeout=10, what="a dead letter")
    assert [(d["id"], d["deliveries"]) for d in ops.dead_letters()] == [(dead, 2)]
    attempts = [m.attempt for m in iter(lambda: worker.receive(timeout=0.3), None) if m.id == dead]
    assert attempts == [1, 2]
    assert ops.requeue(dead)["requeued"] == ["worker"]
    again = worker.receive(timeout=5)
    assert again is not None and (again.id, again.attempt) == (dead, 1)
    worker.ack(again.id)
    assert ops.dead_letters() == [] and ops.unacked() == []


def test_a_push_reaches_only_its_recipient(broker: BrokerProcess, make_client: Any) -> None:
    a = make_client(broker.endpoint, agent="a")
    nosy = make_client(broker.endpoint, agent="nosy")
    seen: list[Any] = []
    nosy.on_message(seen.append)
    events = nosy.events(timeout=1.0)  # nosy's SUB, from the seq before the send
    a.connect()
    sent = make_client(broker.endpoint).send("for a only", "s3cret", to="a")
    got = a.receive(timeout=5)
    assert got is not None and got.id == sent["id"] and got.body == "s3cret"
    published = [e for e in events if "s3cret" in str(e.body)]
    assert published == [] and seen == [] and nosy.receive(timeout=0.3) is None


def test_assign_pushes_the_claim_to_the_task_callback(broker: BrokerProcess, make_client: Any) -> None:
    ops = make_client(broker.endpoint)
    ops.create_task("build-7")
    worker = make_client(broker.endpoint, agent="w1")
    tasks: queue.Queue[Any] = queue.Queue()
    worker.on_task(tasks.put)
    reply = ops.assign("w1", "build-7")
    msg = tasks.get(timeout=5)
    claim = msg.claim
    assert claim is not None and (claim.task_id, claim.token) == ("build-7", reply["token"])
    assert ops.task("build-7")["owner"] == "w1"
    done = worker.complete("build-7", token=claim.token)
    assert done["status"] == "completed" and done["completed_by"] == "w1"


def test_receivers_filters_copies_and_request_reply(broker: BrokerProcess, make_client: Any) -> None:
    alice = make_client(broker.endpoint, agent="alice")
    bob = make_client(broker.endpoint, agent="bob")
    every: queue.Queue[Any] = queue.Queue()
    urgent: queue.Queue[Any] = queue.Queue()
    bob.on_message(every.put)
    bob.on_message(urgent.put, {"priority": ["critical", "high"]})

    if hasattr(bob, "_client"):  # the async driver: a callback that calls the client awaits it
        async def answer(msg: Any) -> None:
            await bob._client.reply(msg, {"sum": sum(msg.body)})
    else:
        def answer(msg: Any) -> None:  # type: ignore[misc]
            bob.reply(msg, {"sum": sum(msg.body)})
    bob.on_message(answer, {"type": "request"})
    alice.send("fyi", to="bob")
    alice.send("now!", to="bob", priority="critical")
    assert [every.get(timeout=5).subject for _ in range(2)] == ["fyi", "now!"]
    assert urgent.get(timeout=5).subject == "now!" and urgent.empty()
    reply = alice.request("bob", "add", [1, 2, 3], timeout=5)
    assert reply.type == "reply" and reply.body == {"sum": 6} and reply.sender == "bob"
    with pytest.raises(NoReply):
        alice.request("nobody-home", "hello?", timeout=0.3)
    with pytest.raises(InvalidArgument):
        make_client(broker.endpoint).on_message(print)  # no agent: nothing is pushed to it


def test_watch_task_streams_a_tasks_notifications(broker: BrokerProcess, make_client: Any) -> None:
    sender = make_client(broker.endpoint, agent="runner")
    watcher = make_client(broker.endpoint, agent="watcher")
    got: queue.Queue[Any] = queue.Queue()
    watcher.watch_task("t9", got.put)
    for step in ("start", "50%", "done"):
        sender.notify_task("t9", step)
    assert [got.get(timeout=5).subject for _ in range(3)] == ["start", "50%", "done"]
    updates: queue.Queue[Any] = queue.Queue()
    watcher.subscribe_task_updates(updates.put, task="t9", since=watcher.hello()["seq"])
    sender.create_task("t9")
    sender.claim("t9")
    first, second = updates.get(timeout=5), updates.get(timeout=5)
    assert (first["task_id"], first["new_status"]) == ("t9", "available")
    assert (second["old_status"], second["new_status"], second["claimed_by"]) == ("available", "claimed", "runner")


class _Proxy:
    """A TCP relay between a SUB and the broker's PUB that the test can cut."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.accepted = 0
        self.open = threading.Event()
        self.open.set()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.accepted += 1
            self.conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                pipe = threading.Thread(target=self._pipe, args=(src, dst), daemon=True)
                self.threads.append(pipe)
                pipe.start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        for s in self.conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns = []

    def close(self) -> None:
        """Cut every connection and stop listening; returns once every relay thread ended (a
        listening socket's close does not wake its accept: its shutdown does)."""
        conns = list(self.conns)
        self.cut()
        try:
            self.server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        for thread in self.threads:
            thread.join(10)
        self.server.close()
        for s in conns:
            s.close()


def test_a_cut_sub_connection_loses_no_event_and_repeats_none(tmp_path: Path,
                                                              broker_factory: Callable[..., BrokerProcess]) -> None:
    b = broker_factory()
    proxy = _Proxy(b.pub_port)
    try:
        pub = Client(b.endpoint)
        watcher = Client(b.endpoint)
        watcher.info = watcher.hello()
        # the watcher's SUB goes through the proxy: the broker's hello names it
        real_hello = watcher.hello
        watcher.hello = lambda: {**real_hello(), "pub": [f"tcp://127.0.0.1:{proxy.port}"]}  # type: ignore[method-assign]
        seqs: list[int] = []
        start = pub.hello()["seq"]
        watcher.subscribe(lambda e: seqs.append(e.seq), topics=["msg.flood"], since=start)
        wait_for(lambda: proxy.conns, what="the SUB to connect through the proxy")
        for i in range(5000):
            pub.publish("flood", i)
            if i == 1500:
                proxy.cut()  # the SUB's TCP connection dies mid-stream; it reconnects
        wait_for(lambda: len(seqs) >= 5000, timeout=60, what="every event")
        assert seqs == list(range(start + 1, start + 5001))  # each exactly once, in order
        assert proxy.accepted >= 2, "the SUB never reconnected: the cut did not happen"
        pub.close()
        watcher.close()
    finally:
        proxy.close()


def test_receive_reads_in_its_own_thread_while_other_calls_take_the_pushes(broker: BrokerProcess) -> None:
    """A Client with no callbacks has no push thread: receive() waits on the socket itself.
    Calls made meanwhile from another thread read whatever arrives first (their reply or a
    push) and must hand the push over: every message reaches receive(), none is stranded in
    the buffer until the next call."""
    sender = Client(broker.endpoint, timeout=5)
    worker = Client(broker.endpoint, agent="direct", ttl=10, timeout=5)
    try:
        worker.connect()
        assert worker.receive(timeout=0.05) is None
        assert not worker._push_threads  # the point of the test: no push thread
        stop = threading.Event()

        def busy() -> None:  # the same client's socket, kept busy by another thread
            while not stop.is_set():
                worker.status()

        caller = threading.Thread(target=busy)
        caller.start()
        try:
            got = []
            for i in range(50):
                sender.send("n", {"i": i}, to="direct")
                msg = worker.receive(timeout=5)
                assert msg is not None, f"message {i} never reached receive()"
                got.append(msg.body["i"])
        finally:
            stop.set()
            caller.join(10)
        assert got == list(range(50))
    finally:
        worker.close()
        sender.close()


def test_close_wakes_a_receive_waiting_on_the_socket(broker: BrokerProcess) -> None:
    worker = Client(broker.endpoint, agent="closing", ttl=10, timeout=5)
    worker.connect()
    out: queue.Queue[Any] = queue.Queue()
    waiting = threading.Thread(target=lambda: out.put(worker.receive(timeout=30)))
    waiting.start()
    wait_for(lambda: worker._direct == 1, 5)  # it is in select on the socket
    worker.close()
    waiting.join(5)
    assert not waiting.is_alive() and out.get_nowait() is None
