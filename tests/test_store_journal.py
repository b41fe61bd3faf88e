"""The LMDB store over its journal (zmesh/store/lmdb.py, checkpoints.py): a process killed at
each point of a commit or a checkpoint loses nothing the journal took, and after an OS crash
(the machine's boot id changed, the stop not clean) the store is rebuilt from the last
snapshot plus the journal. Children are real processes that die by ``os._exit`` at the
named point, the way a kill -9 would find them."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zmesh.store import LmdbStore
from zmesh.store.checkpoints import BOOT_FILE, CLEAN_FILE, DATA_FILE, SNAPSHOT

CHILD = r"""
import os, sys
from zmesh.store import LmdbStore, redo
import zmesh.store.checkpoints as checkpoints

path, point, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = LmdbStore(path, durability="full", segment_bytes=4096)
for i in range(n):
    with store.write() as txn:
        txn.put("tasks", b"t%d" % i, b"v%d" % i)
if point == "between-journal-and-lmdb":
    journal = store.journal
    def dying(txn, changes):  # the record is flushed; LMDB never commits it
        journal.append(redo.encode(changes))
        journal.sync()
        os._exit(9)
    store._commit = dying
    with store.write() as txn:
        txn.put("tasks", b"last", b"only in the journal")
elif point.startswith("checkpoint-"):
    where = point[len("checkpoint-"):]
    real_replace, real_fsync = os.replace, checkpoints._fsync_tree
    def replace(src, dst):
        if os.path.basename(dst) == where:
            os._exit(9)
        return real_replace(src, dst)
    def fsync_tree(p):
        if where == "copying":
            os._exit(9)
        return real_fsync(p)
    checkpoints.os.replace = replace
    checkpoints._fsync_tree = fsync_tree
    store.checkpoint()
elif point == "clean":
    store.close()
    sys.exit(0)
os._exit(9)
"""


def child(path: Path, point: str, n: int = 30) -> None:
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), point, str(n)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == (0 if point == "clean" else 9), done.stderr


def stored(path: Path, **kw: object) -> dict[bytes, bytes]:
    store = LmdbStore(path, durability="full", segment_bytes=4096, **kw)  # type: ignore[arg-type]
    try:
        with store.read() as txn:
            return {k: v for k, v in txn.scan("tasks")}
    finally:
        store.close()


def expected(n: int) -> dict[bytes, bytes]:
    return {b"t%d" % i: b"v%d" % i for i in range(n)}


def as_after_an_os_crash(path: Path) -> None:
    """What an OS crash may leave: another boot, and an LMDB file that cannot be trusted
    (here: garbage, so a store that used it would be caught)."""
    (path / BOOT_FILE).write_text("another-boot\n")
    (path / DATA_FILE).write_bytes(b"\x5a" * 8192)


def test_a_crash_between_the_journal_flush_and_the_lmdb_commit_replays_the_record(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    child(tmp_path, "between-journal-and-lmdb")
    with caplog.at_level(logging.INFO, logger="zmesh.store"):
        assert stored(tmp_path) == {**expected(30), b"last": b"only in the journal"}
    opened = [r for r in caplog.records if getattr(r, "event", None) == "store.opened"]
    assert opened and opened[0].replayed == 1 and "same boot" in opened[0].why  # type: ignore[attr-defined]


def test_after_an_os_crash_the_store_is_rebuilt_from_the_snapshot_and_the_journal(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    child(tmp_path, "kill")
    as_after_an_os_crash(tmp_path)
    with caplog.at_level(logging.INFO, logger="zmesh.store"):
        assert stored(tmp_path) == expected(30)
    rebuilt = [r for r in caplog.records if getattr(r, "event", None) == "store.rebuilt"]
    assert rebuilt and "machine restarted" in rebuilt[0].getMessage()
    assert (tmp_path / (DATA_FILE + ".suspect")).exists()  # the untrusted file is kept, not deleted
    assert stored(tmp_path) == expected(30)  # and what was rebuilt stays


def test_a_clean_stop_is_trusted_across_a_reboot(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    child(tmp_path, "clean")
    assert (tmp_path / CLEAN_FILE).exists()
    (tmp_path / BOOT_FILE).write_text("another-boot\n")
    with caplog.at_level(logging.INFO, logger="zmesh.store"):
        assert stored(tmp_path) == expected(30)
    assert not [r for r in caplog.records if getattr(r, "event", None) == "store.rebuilt"]
    assert (tmp_path / CLEAN_FILE).exists()  # written again by that store's own clean stop


@pytest.mark.parametrize("where", ["copying", SNAPSHOT + ".old", SNAPSHOT])
def test_a_checkpoint_killed_at_any_step_recovers(tmp_path: Path, where: str) -> None:
    child(tmp_path, "checkpoint-" + where)
    assert stored(tmp_path) == expected(30)  # same boot: LMDB's file and the journal
    as_after_an_os_crash(tmp_path)  # and from the snapshot that is whole, plus the journal
    assert stored(tmp_path) == expected(30)


def test_checkpoints_retire_the_segments_they_cover(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path, durability="full", segment_bytes=4096)
    try:
        for i in range(300):
            with store.write() as txn:
                txn.put("tasks", b"t%d" % i, b"v%d" % i)
        journal = store.journal
        assert journal is not None
        before = len(journal.segments)
        assert before >= 3
        seq = store.checkpoint()
        assert seq == store.applied
        assert len(journal.segments) == 1  # only the active one is left
    finally:
        store.close()
    as_after_an_os_crash(tmp_path)
    assert stored(tmp_path) == expected(300)


def test_a_store_whose_journal_is_gone_starts_it_over_from_lmdb(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    child(tmp_path, "kill")
    for f in (tmp_path / "journal").glob("*.wal"):
        f.unlink()
    with caplog.at_level(logging.INFO, logger="zmesh.store"):
        assert stored(tmp_path) == expected(30)  # same boot: LMDB holds it all
    assert [r for r in caplog.records if getattr(r, "event", None) == "journal.restarted"]
    as_after_an_os_crash(tmp_path)  # the new start was checkpointed: a rebuild finds everything
    assert stored(tmp_path) == expected(30)


def test_a_commit_that_fails_takes_its_journal_record_back(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path, durability="full", segment_bytes=4096)
    try:
        with store.write() as txn:
            txn.put("tasks", b"kept", b"1")
        journal = store.journal
        assert journal is not None
        seq = journal.last_seq

        class Boom(Exception):
            pass

        def failing() -> None:
            raise Boom()

        with pytest.raises(Boom):
            with store.write() as txn:
                txn.put("tasks", b"lost", b"2")
                txn.before_commit(failing)
        assert journal.last_seq == seq  # a hook failed: nothing was journaled
        with store.write() as txn:
            txn.put("tasks", b"after", b"3")
    finally:
        store.close()
    as_after_an_os_crash(tmp_path)
    assert stored(tmp_path) == {b"kept": b"1", b"after": b"3"}


def test_a_damaged_journal_is_cut_at_the_last_good_record_with_one_clear_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An OS crash (the LMDB file rebuilt) over a journal with a flipped byte: the store holds
    exactly the records before the damage and says so in one error line naming the seq it
    recovered to and where the rest was kept."""
    child(tmp_path, "kill", n=60)
    segments = sorted((tmp_path / "journal").glob("*.wal"))
    data = bytearray(segments[0].read_bytes())
    # the first segment's records: t0.. ; flip a byte inside the 11th record's payload
    at, seq = 32, 0
    while seq < 10:
        length = int.from_bytes(data[at:at + 4], "little")
        at += 16 + length
        seq += 1
    data[at + 16 + 5] ^= 0x40
    segments[0].write_bytes(bytes(data))
    as_after_an_os_crash(tmp_path)
    with caplog.at_level(logging.INFO, logger="zmesh.store"):
        got = stored(tmp_path)
    assert got == expected(10)  # records 1..10: t0..t9; t10 was the damaged one
    cut = [r for r in caplog.records if getattr(r, "event", None) == "journal.cut"]
    assert len(cut) == 1 and cut[0].levelno == logging.ERROR
    line = cut[0].getMessage()
    assert "CRC mismatch" in line and "recovered to seq 10" in line and "lost-" in line


DIE_AT_JOURNAL_START = r"""
import os, sys
import zmesh.store.lmdb as lmdb_store
real = lmdb_store.Journal.start
def dying(self, *a, **kw):
    real(self, *a, **kw)
    os._exit(9)
lmdb_store.Journal.start = dying
lmdb_store.LmdbStore(sys.argv[1], durability="full", segment_bytes=4096)
"""


def test_a_store_from_before_the_journal_survives_a_crash_in_its_first_open(tmp_path: Path) -> None:
    """The first open of a directory without a journal records the boot and takes its
    snapshot before the journal exists: a crash right after the journal starts, then a
    reboot, still finds the data (it used to be rebuilt from nothing)."""
    child(tmp_path, "clean")
    for name in ("journal", SNAPSHOT, BOOT_FILE, CLEAN_FILE):  # as a zmesh before the journal left it
        target = tmp_path / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    done = subprocess.run([sys.executable, "-c", DIE_AT_JOURNAL_START, str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 9, done.stderr
    (tmp_path / BOOT_FILE).write_text("another-boot\n")  # and the machine restarted
    assert stored(tmp_path) == expected(30)


@pytest.mark.parametrize("field, value", [("segment_bytes", 0), ("segment_bytes", -1), ("segment_bytes", 10),
                                          ("segment_bytes", 1.5), ("checkpoint_bytes", 0),
                                          ("checkpoint_bytes", float("nan")), ("checkpoint_bytes", True)])
def test_store_sizes_are_refused_naming_the_field(tmp_path: Path, field: str, value: object) -> None:
    from zmesh.errors import StoreError

    with pytest.raises(StoreError, match="segment" if field == "segment_bytes" else field):
        LmdbStore(tmp_path, **{field: value})  # type: ignore[arg-type]
    LmdbStore(tmp_path).close()  # and the directory is free again


def test_records_of_another_store_apply_in_order_journaled_and_survive_a_restart(tmp_path: Path) -> None:
    """A replica's apply (LmdbStore.apply_records): the records another store wrote, at their
    own seqs, in one transaction; journaled, so a kill after it replays them; a gap, a
    repeat or a record that does not parse is refused whole, and the store is unchanged."""
    from zmesh.errors import StoreError
    from zmesh.store import redo

    source = LmdbStore(tmp_path / "source", durability="none")
    shipped: list[tuple[int, bytes]] = []
    source.on_record = lambda seq, payload: shipped.append((seq, payload))
    for i in range(5):
        with source.write() as txn:
            txn.put("tasks", b"t%d" % i, b"v%d" % i)
            if i == 3:
                txn.delete("tasks", b"t1")
    source.close()
    assert [seq for seq, _ in shipped] == [1, 2, 3, 4, 5]

    replica = LmdbStore(tmp_path / "replica", durability="full")
    assert replica.apply_records(shipped[:2]) == 2
    for bad in ([shipped[3]], [shipped[1]], [(3, b"\x09not a record")]):  # a gap, a repeat, garbage
        with pytest.raises((StoreError, redo.RedoError)):
            replica.apply_records(bad)
        assert replica.applied == 2
    assert replica.apply_records(shipped[2:]) == 5
    with replica.read() as txn:
        assert [k for k, _ in txn.scan("tasks")] == [b"t0", b"t2", b"t3", b"t4"]
    shutil.copytree(tmp_path / "replica", tmp_path / "killed")  # the files as a kill -9 leaves them
    replica.close()
    # then an OS crash: another boot, no clean stop: LMDB is rebuilt from its snapshot and the journal
    again = LmdbStore(tmp_path / "killed", durability="full", boot_id="another-boot")
    try:
        assert again.recovery["rebuilt"] and again.recovery["replayed"] == 5, again.recovery
        assert again.applied == 5
        with again.read() as txn:
            assert txn.get("tasks", b"t4") == b"v4" and txn.get("tasks", b"t1") is None
        with again.write() as txn:  # and it goes on from there as its own journal
            txn.put("tasks", b"next", b"x")
        assert again.applied == 6
    finally:
        again.close()
