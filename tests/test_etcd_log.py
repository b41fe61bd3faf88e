"""The replicated log on a real 3-member etcd cluster (loopback, free ports, tmp dirs, every
member stopped by PID): etcd's own fencing refuses a deposed term, a retry after a lost
answer never appends twice, big records span transactions and come back whole, a follower
sees every entry once and in order across an etcd leader's death, and a trimmed log is
reported, not skipped."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Iterator

import pytest

from zmesh.testing import EtcdCluster

pyetcd = pytest.importorskip("pyetcd", reason="the etcd extra is not installed (pip install '.[etcd]')")

from zmesh.store.etcd_kv import (MAX_TXN_OPS, PAGE, Compare, EtcdCompacted, EtcdKV, EtcdTooLarge,  # noqa: E402
                                 EtcdUnavailable, Get, Put, parse_endpoints)
from zmesh.store.etcd_log import CHUNK, Deposed, Entry, EtcdLog, Head, LogGap, Term  # noqa: E402

pytestmark = pytest.mark.slow  # the cluster fixture (conftest.py) skips without etcd


@pytest.fixture
def kv(cluster: EtcdCluster) -> Iterator[EtcdKV]:
    client = EtcdKV(parse_endpoints(cluster.store_url), timeout=3.0)
    try:
        yield client
    finally:
        client.close()


def _mesh() -> str:
    return "t" + uuid.uuid4().hex[:10]


def _wait(cond, timeout: float = 15.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_endpoints_are_parsed_and_refused_naming_the_part() -> None:
    assert parse_endpoints("etcd://127.0.0.1:2379,h2:1") == [("127.0.0.1", 2379), ("h2", 1)]
    for bad in ("etcd://127.0.0.1", "etcd://:80", "etcd://h:0", "etcd://h:99999", "etcd://h:x"):
        with pytest.raises(ValueError, match="is not host:port"):
            parse_endpoints(bad)


def test_scan_pages_through_more_keys_than_one_call_returns(kv: EtcdKV) -> None:
    prefix = f"/scan-{uuid.uuid4().hex[:6]}/".encode()
    keys = [prefix + b"%05d" % i for i in range(PAGE * 2 + 37)]
    for i in range(0, len(keys), 100):
        assert kv.txn([], [Put(k, b"v" + k[-5:]) for k in keys[i:i + 100]]).succeeded
    got = list(kv.scan_prefix(prefix))
    assert [x.key for x in got] == keys and all(x.value == b"v" + x.key[-5:] for x in got)
    assert [x.key for x in kv.scan_prefix(prefix, limit=5)] == keys[:5]


def test_a_transaction_above_etcds_limits_is_refused_before_it_is_sent(kv: EtcdKV) -> None:
    with pytest.raises(EtcdTooLarge, match="operations"):
        kv.txn([], [Put(b"/big/%d" % i, b"x") for i in range(MAX_TXN_OPS + 1)])
    with pytest.raises(EtcdTooLarge, match="bytes"):
        kv.txn([], [Put(b"/big/one", b"x" * (2 << 20))])
    assert kv.get(b"/big/0") is None and kv.get(b"/big/one") is None


def test_one_term_leads_and_its_epoch_grows_with_each_new_term(kv: EtcdKV) -> None:
    a, b = EtcdLog(kv, (mesh := _mesh())), EtcdLog(kv, mesh)
    term = a.campaign(b"broker-a", ttl=5)
    assert term is not None
    assert b.campaign(b"broker-b", ttl=5) is None  # another leads: no second term
    assert a.leader() == (term.epoch, b"broker-a")
    assert a.keep(term)
    a.resign(term)
    assert not a.keep(term)
    second = b.campaign(b"broker-b", ttl=5)
    assert second is not None and second.epoch > term.epoch
    b.resign(second)


def test_a_deposed_term_cannot_append_and_the_head_does_not_move(kv: EtcdKV) -> None:
    elog = EtcdLog(kv, _mesh())
    old = elog.campaign(b"a", ttl=5)
    assert old is not None
    head = elog.append(old, elog.head(), [b"r1", b"r2"])
    assert (head.seq, head.epoch) == (2, old.epoch)
    kv.revoke(old.lease)  # the term's lease ends (its broker stalled past the TTL)
    new = elog.campaign(b"b", ttl=5)
    assert new is not None and new.epoch > old.epoch
    with pytest.raises(Deposed, match="term .* is over"):
        elog.append(old, head, [b"stale"])  # the old broker's head compare still holds: the epoch refuses
    assert elog.head() == head
    head = elog.append(new, head, [b"r3"])
    assert [(e.seq, e.epoch, e.record) for e in elog.entries(0)] == [
        (1, old.epoch, b"r1"), (2, old.epoch, b"r2"), (3, new.epoch, b"r3")]
    elog.resign(new)


def test_an_append_whose_answer_was_lost_is_settled_by_the_head_never_twice(kv: EtcdKV) -> None:
    elog = EtcdLog(kv, _mesh())
    term = elog.campaign(b"a", ttl=5)
    assert term is not None
    before = elog.head()
    assert elog.settle(term, before, [b"x"]) is None  # it did not take: append again
    after = elog.append(term, before, [b"x"])  # took, but say its answer was lost
    assert elog.settle(term, before, [b"x"]) == after
    with pytest.raises(Deposed):  # appending again after the lost answer is refused by the head compare
        elog.append(term, before, [b"x"])
    assert [e.record for e in elog.entries(0)] == [b"x"]
    elog.resign(term)


def test_a_record_bigger_than_a_transaction_comes_back_whole(kv: EtcdKV) -> None:
    elog = EtcdLog(kv, _mesh())
    term = elog.campaign(b"a", ttl=5)
    assert term is not None
    big = bytes(range(256)) * ((CHUNK * 3 + 12345) // 256)
    head = elog.append(term, elog.head(), [b"small", big, b"after"])
    assert head.seq == 3
    assert [e.record for e in elog.entries(0)] == [b"small", big, b"after"]
    elog.resign(term)


def test_a_new_term_rewrites_a_seq_an_old_term_left_half_written(kv: EtcdKV) -> None:
    """The old term wrote the first parts of seq 1 and stalled before its head write: the
    new term's entry 1 is read, not the leftovers."""
    elog = EtcdLog(kv, _mesh())
    old = elog.campaign(b"a", ttl=5)
    assert old is not None
    leftovers = elog._parts(1, old.epoch, b"o" * (CHUNK * 3))
    for part in leftovers[:2]:  # what an append of a 3 MiB record writes before its last txn
        kv.put(part.key, part.value)
    kv.revoke(old.lease)
    new = elog.campaign(b"b", ttl=5)
    assert new is not None
    elog.append(new, elog.head(), [b"new"])
    assert [(e.seq, e.epoch, e.record) for e in elog.entries(0)] == [(1, new.epoch, b"new")]
    elog.resign(new)


def test_a_follower_gets_every_entry_once_in_order_across_the_etcd_leaders_death(cluster: EtcdCluster,
                                                                                   kv: EtcdKV) -> None:
    elog = EtcdLog(kv, (mesh := _mesh()))
    term = elog.campaign(b"a", ttl=10)
    assert term is not None
    head = elog.append(term, elog.head(), [b"e%d" % i for i in range(1, 21)])
    got: list[Entry] = []
    errors: list[Exception] = []
    lock = threading.Lock()

    def on_entries(batch: list[Entry]) -> None:
        with lock:
            got.extend(batch)

    follower_kv = EtcdKV(parse_endpoints(cluster.store_url), timeout=3.0)
    follower = EtcdLog(follower_kv, mesh).follow(5, on_entries, errors.append)
    leader = cluster.leader()
    assert leader is not None
    try:
        _wait(lambda: len(got) == 15, what="the catch-up")
        cluster.kill(leader)
        for i in range(21, 61):  # one entry an append, retried across the election
            head = _append_retrying(elog, term, head, b"e%d" % i)
        _wait(lambda: len(got) == 55, timeout=30, what="the live entries")
        assert not errors, errors
        assert [e.seq for e in got] == list(range(6, 61))
        assert [e.record for e in got] == [b"e%d" % i for i in range(6, 61)]
    finally:
        follower.stop()
        follower_kv.close()
        if not cluster.members[leader].running():
            cluster.restart(leader)
    elog.resign(term)


def _append_retrying(elog: EtcdLog, term: Term, head: Head, record: bytes, timeout: float = 30.0) -> Head:
    """What a broker does: append; when etcd does not answer, settle once it does (the
    append took, or append again), never appending twice."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return elog.append(term, head, [record])
        except EtcdUnavailable:
            pass
        while True:
            try:
                settled = elog.settle(term, head, [record])
                break
            except EtcdUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if settled is not None:
            return settled


def test_a_trimmed_and_compacted_log_is_reported_not_skipped(kv: EtcdKV) -> None:
    elog = EtcdLog(kv, _mesh())
    term = elog.campaign(b"a", ttl=5)
    assert term is not None
    head = elog.append(term, elog.head(), [b"r%d" % i for i in range(1, 11)])
    assert elog.trim(6) == 6  # a snapshot covers 1-6
    assert [e.seq for e in elog.entries(6)] == [7, 8, 9, 10]
    with pytest.raises(LogGap, match="ends at seq 0, its head is at 10"):
        list(elog.entries(0))
    kv.compact(kv.revision())
    errors: list[Exception] = []
    watch = kv.watch(elog.log_prefix, 1, lambda batch: None, errors.append)
    try:
        _wait(lambda: errors, what="the compaction report")
    finally:
        watch.cancel()
        watch.join()
    assert isinstance(errors[0], EtcdCompacted) and errors[0].revision > 1
    assert head.seq == 10
    elog.resign(term)


def test_a_member_that_is_down_is_not_banned(cluster: EtcdCluster) -> None:
    """One member killed: calls go on through the others at once, and once it is back it
    serves again (python-etcd3 bans a failed endpoint for 300 s)."""
    client = EtcdKV(parse_endpoints(cluster.store_url), timeout=3.0)
    try:
        victim = next(i for i in range(3) if i != cluster.leader())
        cluster.kill(victim)
        for i in range(30):
            key = b"/nb/%d" % i
            _wait(lambda key=key: _put(client, key), what=f"put {i} with member {victim} down")
        cluster.restart(victim)
        only = EtcdKV(parse_endpoints(f"127.0.0.1:{cluster.members[victim].client_port}"), timeout=3.0)
        try:
            _wait(lambda: only.get(b"/nb/29") is not None, what="the restarted member to catch up")
        finally:
            only.close()
    finally:
        client.close()
        for i in range(3):
            if not cluster.members[i].running():
                cluster.restart(i)


def _put(client: EtcdKV, key: bytes) -> bool:
    try:
        client.put(key, b"x")
        return True
    except EtcdUnavailable:
        return False


def test_compare_targets_guard_a_transaction(kv: EtcdKV) -> None:
    key = f"/cmp-{uuid.uuid4().hex[:6]}".encode()
    assert kv.txn([Compare(key, "create", "==", 0)], [Put(key, b"1")]).succeeded
    assert not kv.txn([Compare(key, "create", "==", 0)], [Put(key, b"2")]).succeeded
    found = kv.get(key)
    assert found is not None and found.value == b"1" and found.version == 1
    assert kv.txn([Compare(key, "value", "==", b"1"), Compare(key, "mod", "==", found.mod_revision),
                   Compare(key, "version", "<", 2)], [Put(key, b"3")]).succeeded
    result = kv.txn([Compare(key, "value", "==", b"1")], [Put(key, b"4")], [Get(key)])
    assert not result.succeeded and result.got[0] is not None and result.got[0].value == b"3"

