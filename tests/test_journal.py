"""The write-ahead journal on its own (zmesh/store/journal.py) and the redo record
(zmesh/store/redo.py): recovery ends at the last good record whatever the damage (a torn
last record, a flipped byte, a zero-filled tail, a missing segment), never applies what
follows it, and the writer goes on right after it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmesh.errors import StoreError
from zmesh.store import redo
from zmesh.store.journal import HEADER, RECORD_HEAD, SPARE, Journal

SMALL = 4096  # a segment of 4 KiB: a few dozen records each


def write(path: Path, payloads: list[bytes], segment_bytes: int = SMALL) -> Journal:
    j = Journal(str(path), segment_bytes=segment_bytes)
    assert list(j.recover()) == []
    j.start()
    for p in payloads:
        j.append(p)
    j.sync()
    return j


def reopen(path: Path, after: int = 0, segment_bytes: int = SMALL) -> tuple[Journal, list[tuple[int, bytes]]]:
    j = Journal(str(path), segment_bytes=segment_bytes)
    got = list(j.recover(after))
    return j, got


def payloads(n: int, size: int = 100) -> list[bytes]:
    return [(f"{i:06d}".encode() * (size // 6 + 1))[:size] for i in range(n)]


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.wal"))


def offsets(path: Path) -> list[tuple[Path, int, int]]:
    """(segment, offset, length) of every record, read from the files."""
    out = []
    for seg in segments(path):
        data = seg.read_bytes()
        at = HEADER
        while at + RECORD_HEAD <= len(data):
            length = int.from_bytes(data[at:at + 4], "little")
            seq = int.from_bytes(data[at + 8:at + 16], "little")
            if length == 0 and seq == 0:
                break
            out.append((seg, at, length))
            at += RECORD_HEAD + length
    return out


def test_records_round_trip_across_segments(tmp_path: Path) -> None:
    data = payloads(200)
    j = write(tmp_path, data)
    assert j.last_seq == 200
    j.close()
    assert len(segments(tmp_path)) > 3  # 200 x 116 bytes over 4 KiB segments
    j2, got = reopen(tmp_path)
    assert got == list(enumerate(data, 1))
    assert j2.end is not None and j2.end.clean and j2.end.seq == 200
    assert list(reopen(tmp_path, after=150)[1]) == list(enumerate(data, 1))[150:]


def test_a_zero_filled_preallocated_tail_is_the_normal_end(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    j = write(tmp_path, payloads(3), segment_bytes=1 << 20)
    j.close()
    seg = segments(tmp_path)[-1]
    assert seg.stat().st_size == 1 << 20  # preallocated: the rest is zeros
    assert seg.read_bytes()[offsets(tmp_path)[-1][1] + RECORD_HEAD + 100:] == bytes(
        seg.stat().st_size - offsets(tmp_path)[-1][1] - RECORD_HEAD - 100)
    with caplog.at_level(logging.INFO, logger="zmesh.store"):
        j2, got = reopen(tmp_path, segment_bytes=1 << 20)
    assert [s for s, _ in got] == [1, 2, 3]
    assert j2.end is not None and j2.end.clean and j2.end.lost_bytes == 0
    assert not list(tmp_path.glob("lost-*"))


def _continue(path: Path, journal: Journal, payload: bytes) -> int:
    journal.start()
    seq = journal.append(payload)
    journal.close()
    return seq


def test_a_torn_last_record_ends_the_replay_before_it(tmp_path: Path) -> None:
    data = payloads(10)
    write(tmp_path, data, segment_bytes=1 << 20).close()
    seg, at, length = offsets(tmp_path)[-1]
    with open(seg, "r+b") as f:  # the last write reached the disk only in part
        f.seek(at + RECORD_HEAD + length // 2)
        f.write(bytes(length - length // 2))
    j, got = reopen(tmp_path, segment_bytes=1 << 20)
    assert [s for s, _ in got] == list(range(1, 10))
    assert j.end is not None and not j.end.clean and "corrupt" in j.end.reason and j.end.seq == 9
    assert j.end.moved_to and Path(j.end.moved_to, seg.name).exists()  # kept for an operator
    # the writer goes on right after the last good record: seq 10 again, the torn bytes zeroed
    assert _continue(tmp_path, j, b"new ten") == 10
    _, again = reopen(tmp_path, segment_bytes=1 << 20)
    assert again[-1] == (10, b"new ten") and len(again) == 10


def test_a_file_cut_short_inside_a_record_is_torn(tmp_path: Path) -> None:
    write(tmp_path, payloads(5), segment_bytes=1 << 20).close()
    seg, at, length = offsets(tmp_path)[-1]
    os.truncate(seg, at + RECORD_HEAD + 10)
    j, got = reopen(tmp_path, segment_bytes=1 << 20)
    assert [s for s, _ in got] == [1, 2, 3, 4]
    assert j.end is not None and "torn" in j.end.reason


def test_a_flipped_byte_recovers_to_the_record_before_and_never_replays_past_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = payloads(100)
    write(tmp_path, data).close()
    seg, at, length = offsets(tmp_path)[40]  # record 41, somewhere in the middle
    with open(seg, "r+b") as f:
        f.seek(at + RECORD_HEAD + 7)
        byte = f.read(1)
        f.seek(at + RECORD_HEAD + 7)
        f.write(bytes([byte[0] ^ 0x01]))
    later = [s for s in segments(tmp_path) if s.name > seg.name]
    assert later, "the damage is not in the last segment"
    j, got = reopen(tmp_path)
    assert [s for s, _ in got] == list(range(1, 41))
    assert j.end is not None and j.end.seq == 40 and "CRC" in j.end.reason
    assert j.end.lost_segments == len(later)
    for s in later:  # moved aside, not deleted
        assert not s.exists() and Path(j.end.moved_to or "", s.name).exists()
    # a shorter record written where the corrupt one was must not be followed by the old 42
    assert _continue(tmp_path, j, b"x") == 41
    _, again = reopen(tmp_path)
    assert [s for s, _ in again] == list(range(1, 42)) and again[-1][1] == b"x"


def test_a_missing_segment_recovers_to_the_end_of_the_one_before(tmp_path: Path) -> None:
    data = payloads(200)
    write(tmp_path, data).close()
    segs = segments(tmp_path)
    gone = segs[2]
    last_before = max(i for i, (s, _, _) in enumerate(offsets(tmp_path)) if s == segs[1]) + 1
    gone.unlink()
    j, got = reopen(tmp_path)
    assert [s for s, _ in got] == list(range(1, last_before + 1))
    assert j.end is not None and "missing" in j.end.reason and j.end.seq == last_before
    assert j.end.lost_segments == len(segs) - 3
    assert _continue(tmp_path, j, b"after the gap") == last_before + 1
    _, again = reopen(tmp_path)
    assert again[-1] == (last_before + 1, b"after the gap")


def test_a_stale_record_of_an_older_seq_is_the_end(tmp_path: Path) -> None:
    """A segment's tail may hold bytes of an earlier life only if zeroing failed: a record
    whose seq is not the next one ends the replay all the same."""
    write(tmp_path, payloads(3), segment_bytes=1 << 20).close()
    seg, at, length = offsets(tmp_path)[0]
    first = seg.read_bytes()[at:at + RECORD_HEAD + length]  # record 1, valid CRC
    _, _, last_len = offsets(tmp_path)[-1]
    with open(seg, "r+b") as f:
        f.seek(offsets(tmp_path)[-1][1] + RECORD_HEAD + last_len)
        f.write(first)
    j, got = reopen(tmp_path, segment_bytes=1 << 20)
    assert [s for s, _ in got] == [1, 2, 3]
    assert j.end is not None and "expected 4" in j.end.reason


def test_rewind_takes_the_last_record_back(tmp_path: Path) -> None:
    j = write(tmp_path, payloads(3))
    seq = j.append(b"failed commit")
    j.rewind(seq)
    assert j.next_seq == seq
    assert j.append(b"instead") == seq
    j.close()
    assert reopen(tmp_path)[1][-1] == (4, b"instead")
    with pytest.raises(StoreError, match="rewind"):
        j2, _ = reopen(tmp_path)
        j2.start()
        try:
            j2.rewind(2)
        finally:
            j2.close()


def test_retired_segments_are_recycled_zeroed(tmp_path: Path) -> None:
    j = write(tmp_path, payloads(100))
    before = len(j.segments)
    assert j.retire(60) >= 1
    assert len(j.segments) < before and j.segments[0].first_seq <= 61
    for p in payloads(100):  # enough to use the recycled file as a spare
        j.append(p)
    j.close()
    _, got = reopen(tmp_path, after=60)
    assert [s for s, _ in got] == list(range(61, 201))
    spare = tmp_path / SPARE
    if spare.exists():  # a spare is all zeros, whatever file it was made from
        assert spare.read_bytes() == bytes(spare.stat().st_size)


def test_reset_starts_over_at_a_later_seq(tmp_path: Path) -> None:
    write(tmp_path, payloads(5)).close()
    j, _ = reopen(tmp_path)
    j.start(next_seq=1000)
    assert j.append(b"a") == 1000
    j.close()
    _, got = reopen(tmp_path, after=999)
    assert got == [(1000, b"a")]


def test_a_segment_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    write(tmp_path, payloads(2)).close()
    seg = segments(tmp_path)[0]
    raw = bytearray(seg.read_bytes())
    raw[8:12] = (2).to_bytes(4, "little")
    from crc32c import crc32c
    raw[20:24] = crc32c(bytes(raw[:20])).to_bytes(4, "little")
    seg.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="format version 2"):
        reopen(tmp_path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 600), min_size=1, max_size=60), where=st.floats(0, 1),
       flip=st.integers(0, 255))
def test_any_damage_recovers_a_prefix_of_what_was_written(tmp_path_factory: pytest.TempPathFactory,
                                                          sizes: list[int], where: float, flip: int) -> None:
    path = tmp_path_factory.mktemp("j")
    data = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    write(path, data, segment_bytes=2048).close()
    files = segments(path)
    total = sum(f.stat().st_size for f in files)
    pos = int(where * (total - 1))
    for f in files:  # one byte XORed (flip 0 leaves it as it was) anywhere in the journal
        size = f.stat().st_size
        if pos < size:
            raw = bytearray(f.read_bytes())
            raw[pos] ^= flip
            f.write_bytes(bytes(raw))
            break
        pos -= size
    j, got = reopen(path, segment_bytes=2048)
    assert got == list(enumerate(data, 1))[:len(got)]  # a prefix, exactly as written
    j.start()
    seq = j.append(b"next")
    j.close()
    assert seq == len(got) + 1
    _, again = reopen(path, segment_bytes=2048)
    assert again == [*got, (seq, b"next")]


@given(st.dictionaries(st.binary(min_size=1, max_size=40), st.one_of(st.none(), st.binary(max_size=300)),
                       max_size=30))
def test_redo_records_round_trip(changes: dict[bytes, bytes | None]) -> None:
    assert redo.parse(redo.encode(changes)) == list(changes.items())


def test_redo_refuses_what_it_cannot_apply_exactly() -> None:
    good = redo.encode({b"\x11k": b"v", b"\x11gone": None})
    with pytest.raises(redo.RedoError, match="version 9"):
        redo.parse(b"\x09" + good[1:])
    with pytest.raises(redo.RedoError, match="after its"):
        redo.parse(good + b"x")
    for cut in range(1, len(good)):
        with pytest.raises(redo.RedoError):
            redo.parse(good[:cut])
    with pytest.raises(redo.RedoError, match="unknown kind"):
        redo.parse(redo.encode({b"k": None})[:5] + b"\x07" + redo.encode({b"k": None})[6:])
