"""Messages under random schedules (hypothesis state machine): sends, connections coming
and going, pushes the transport refuses, acks (current and stale), ack deadlines, lease
ends, restarts (clean and crashed), requeues. After every step the stored inbox agrees
with its indexes, its counters and the claim machinery, every entry moved only along the
delivery transition table, and what was pushed respects the tokens and the routes."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from zmesh import protocol
from zmesh.core import Settings
from zmesh.core.deliveries import TRANSITIONS
from zmesh.core.schema import DELIVERY, parse_dead_key, parse_inbox_key, parse_pending_key
from zmesh.errors import RemoteError, StaleToken
from zmesh.protocol.states import DeliveryState

from .test_messages_core import MsgHarness

AGENTS = ("a", "b")
RANK = {p: i for i, p in enumerate(protocol.PRIORITIES)}


def _reachable() -> dict[str, set[str]]:
    """state -> the states the delivery table leads to from it in any number of steps
    (itself included): what an entry may be at the next look, whatever a step did."""
    reach = {state: {state} for state in protocol.DELIVERY_STATES}
    grown = True
    while grown:
        grown = False
        for (old, _), news in TRANSITIONS.items():
            for targets in reach.values():
                if old in targets and not set(news) <= targets:
                    targets.update(news)
                    grown = True
    return reach


REACH = _reachable()


class MessagesMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.h = MsgHarness("lmdb", Path(self.tmp.name) / "d",
                            Settings(default_ttl=10.0, event_log_size=10_000, ack_wait=2.0, message_retention=1000))
        self.conn = 0
        self.route: dict[str, bytes] = {}  # the connection each agent's client speaks from
        self.tokens: dict[tuple[str, int], int] = {}  # latest token pushed per delivery
        self.acked: set[tuple[str, int]] = set()
        self.sent: list[int] = []
        self.states: dict[tuple[str, int], str] = {}  # each entry's state at the last look

    def teardown(self) -> None:
        self.h.close()
        self.tmp.cleanup()

    # ------------------------------------------------------------ helpers
    def _pushes(self) -> None:
        for push in self.h.pushes:
            body = orjson.loads(push.raw)
            key = (push.agent, push.number)
            assert push.route == self.route.get(push.agent), "pushed somewhere the agent's client is not"
            assert key not in self.acked, "an acked message was pushed again"
            if push.token is not None:
                assert push.token > self.tokens.get(key, 0), "a redelivery did not take a new token"
                self.tokens[key] = push.token
            assert body["delivery"]["token"] == push.token and body["delivery"]["agent"] == push.agent
        self._last = list(self.h.pushes)
        self.h.pushes.clear()

    def _do(self, op: str, route: bytes | None = None, **body: Any) -> Any:
        reply = self.h.on(route, op, **body)
        self._pushes()
        return reply

    # ------------------------------------------------------------ rules
    @rule(to=st.sampled_from(AGENTS), ack=st.booleans(), priority=st.sampled_from(protocol.PRIORITIES),
          max_deliver=st.integers(1, 3), ack_wait=st.sampled_from([1.0, 3.0]))
    def send(self, to: str, ack: bool, priority: str, max_deliver: int, ack_wait: float) -> None:
        r = self._do("send", subject="s", to=to, requires_ack=ack, priority=priority, max_deliver=max_deliver,
                     ack_wait=ack_wait)
        self.sent.append(int(r["id"][4:]))

    @rule(ack=st.booleans())
    def broadcast(self, ack: bool) -> None:
        r = self._do("send", subject="all", all=True, requires_ack=ack)
        with self.h.store.read() as txn:
            assert r["addressed"] == sum(1 for _ in txn.scan("agents"))  # every live agent
        self.sent.append(int(r["id"][4:]))

    @rule(agent=st.sampled_from(AGENTS), ttl=st.sampled_from([5.0, 60.0]))
    def connect(self, agent: str, ttl: float) -> None:
        self.conn += 1
        self.route[agent] = b"R%d" % self.conn
        self._do("register", self.route[agent], agent=agent, ttl=ttl)

    @rule(agent=st.sampled_from(AGENTS))
    def heartbeat(self, agent: str) -> None:
        if agent not in self.route:
            return
        try:
            self._do("heartbeat", self.route[agent], agent=agent)
        except RemoteError:
            self.route.pop(agent)  # its lease lapsed: it registers again to come back

    @rule()
    def transport_refuses_last_pushes(self) -> None:
        last = getattr(self, "_last", [])
        if not last:
            return
        with self.h.store.write() as txn:
            self.h.core.undeliverable(self.h.core.batch(txn, self.h.now()), last)
        self._last = []

    @rule(agent=st.sampled_from(AGENTS), pick=st.integers(0, 50), stale=st.booleans())
    def ack(self, agent: str, pick: int, stale: bool) -> None:
        if not self.sent:
            return
        number = self.sent[pick % len(self.sent)]
        key = (agent, number)
        token = self.tokens.get(key)
        with self.h.store.read() as txn:
            current = self.h.core.deliveries.token(number, agent, txn)
        if stale and token is not None and current is not None and token != current:
            with pytest.raises(StaleToken):
                self._do("ack", agent=agent, id=f"msg-{number}", token=token)
            return
        try:
            self._do("ack", agent=agent, id=f"msg-{number}", token=current if stale else None)
        except RemoteError as exc:
            assert exc.code == "not_found"
            return
        self.acked.add(key)

    @rule(seconds=st.sampled_from([0.5, 1.5, 4.0, 12.0]))
    def time_passes(self, seconds: float) -> None:
        self.h.expire(self.h.mono + seconds)
        self._pushes()

    @rule(agent=st.sampled_from(AGENTS))
    def unregister(self, agent: str) -> None:
        try:
            self._do("unregister", agent=agent)
        except RemoteError:
            pass
        self.route.pop(agent, None)

    @rule(clean=st.booleans())
    def restart(self, clean: bool) -> None:
        self.h.restart(self.h.mono + 1.0, clean=clean)
        self.route.clear()  # clients attach again with their next heartbeat or register

    @precondition(lambda self: bool(self.sent))
    @rule(pick=st.integers(0, 50))
    def requeue(self, pick: int) -> None:
        number = self.sent[pick % len(self.sent)]
        try:
            self._do("requeue", id=f"msg-{number}")
        except RemoteError as exc:
            assert exc.code == "not_found"

    # ------------------------------------------------------------ invariants
    @invariant()
    def every_entry_moves_along_the_delivery_table(self) -> None:
        with self.h.store.read() as txn:
            entries = {parse_inbox_key(k): orjson.loads(v) for k, v in txn.scan("inbox")}
        for key, entry in entries.items():
            state = entry["state"]
            assert state in protocol.DELIVERY_STATES, (key, state)
            assert (entry["acked_at"] is not None) == (state == DeliveryState.ACKED), (key, entry)
            before = self.states.get(key, DeliveryState.PENDING)  # every entry starts pending
            assert state in REACH[before], f"{key}: {before} -> {state} is no path of the delivery table"
            self.states[key] = state

    @invariant()
    def the_inbox_agrees_with_its_indexes_counters_and_claims(self) -> None:
        with self.h.store.read() as txn:
            msgs = {int.from_bytes(k, "big"): orjson.loads(v) for k, v in txn.scan("messages")}
            entries = {parse_inbox_key(k): orjson.loads(v) for k, v in txn.scan("inbox")}
            pending = {parse_pending_key(k) for k, _ in txn.scan("pending")}
            dead = {tuple(reversed(parse_dead_key(k))) for k, _ in txn.scan("dead_letters")}
            claims = {bytes(k) for k, _ in txn.scan("claims", prefix=DELIVERY + b":")}
            counters = {k: v for k, v in self.h.core.inspect(txn).counters.items()}
        per_priority = dict.fromkeys(protocol.PRIORITIES, 0)
        for (agent, number), entry in entries.items():
            msg = msgs[number]
            state = entry["state"]
            assert ((agent, number) in pending) == (state == "pending"), (agent, number, state)
            assert ((agent, number) in dead) == (state == "dead"), (agent, number, state)
            held = f"dlv:{number} {agent}".encode() in claims
            assert held == (state == "delivered" and msg["requires_ack"]), (agent, number, state, held)
            assert entry["deliveries"] <= msg["max_deliver"] or not msg["requires_ack"]
            if (agent, number) in self.acked:
                assert state == "acked"
            if state == "pending":
                per_priority[msg["priority"]] += 1
        for priority, n in per_priority.items():
            assert counters.get(f"pending:{priority}", 0) == n, priority
        assert counters.get("dead", 0) == len(dead)
        for number, msg in msgs.items():
            unsettled = sum(1 for agent in msg["recipients"]
                            if msg["requires_ack"] and entries[(agent, number)]["state"] in ("pending", "delivered"))
            assert msg["open"] == unsettled, (number, msg["open"], unsettled)
        held_index = {k for keys in self.h.core.claims.held.values() for k in keys if k.startswith(DELIVERY)}
        assert held_index == claims, "the volatile claim index disagrees with the stored delivery claims"


MessagesMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=50, deadline=None,
                                             suppress_health_check=[HealthCheck.too_slow])
test_messages_machine = MessagesMachine.TestCase
