"""The redo record: one batch's changes to the store, as the journal keeps them and as a
replica will apply them. Pure bytes in, bytes out; no I/O here.

Rules it keeps:

* A change set is the final state of every key a batch touched: a value (put) or None
  (delete). Within a batch the last write of a key wins, so applying the changes in any
  order gives the same store; the record keeps the order the batch first touched each key.
* Keys are the store's whole keys: the table's prefix byte(s) from core/schema.py, then the
  table's own key. The record names no LMDB call and no Python type: any store that keeps
  ordered byte keys can apply it (docs/JOURNAL.md is the format's reference).
* The format is versioned by its first byte. A reader refuses a version it does not know
  (:class:`RedoError`) rather than guess; version 1 is::

      version  u8 = 1
      count    u32 LE            number of changes
      count x  kind u8           1 = put, 2 = delete
               key_len u16 LE    then the key's bytes
               (put only) value_len u32 LE, then the value's bytes

* A record that does not parse exactly (short, trailing bytes, unknown kind) is refused
  whole: a change set is applied all or nothing.
"""

from __future__ import annotations

import struct
from typing import Iterator, Mapping

from ..errors import StoreError

VERSION = 1
PUT = 1
DELETE = 2
_HEAD = struct.Struct("<BI")
_KEY = struct.Struct("<BH")
_U32 = struct.Struct("<I")

Changes = Mapping[bytes, "bytes | None"]


class RedoError(StoreError):
    """A redo record that is not a change set this zmesh can apply."""


def encode(changes: Changes) -> bytes:
    """The change set as a version-1 record (``None`` value: the key was deleted)."""
    parts = [_HEAD.pack(VERSION, len(changes))]
    append = parts.append
    key_head, u32 = _KEY.pack, _U32.pack
    for key, value in changes.items():
        if value is None:
            append(key_head(DELETE, len(key)))
            append(key)
        else:
            append(key_head(PUT, len(key)))
            append(key)
            append(u32(len(value)))
            append(value)
    return b"".join(parts)


def decode(record: bytes) -> Iterator[tuple[bytes, bytes | None]]:
    """The changes of a record, in its order: (key, value) or (key, None) for a delete.
    Raises :class:`RedoError` (before yielding anything) when the record is not exactly a
    version-1 change set."""
    return iter(parse(record))


def parse(record: bytes) -> list[tuple[bytes, bytes | None]]:
    """:func:`decode` as a list (the whole record checked first)."""
    end = len(record)
    if end < _HEAD.size:
        raise RedoError(f"redo record of {end} bytes is shorter than its header")
    version, count = _HEAD.unpack_from(record, 0)
    if version != VERSION:
        raise RedoError(f"redo record version {version}: this zmesh reads version {VERSION}")
    out: list[tuple[bytes, bytes | None]] = []
    append = out.append
    at = _HEAD.size
    unpack_key, unpack_u32 = _KEY.unpack_from, _U32.unpack_from
    try:
        for _ in range(count):
            kind, klen = unpack_key(record, at)
            at += 3
            key_end = at + klen
            if key_end > end:
                raise RedoError("redo record ends inside a key")
            key = record[at:key_end]
            at = key_end
            if kind == PUT:
                (vlen,) = unpack_u32(record, at)
                at += 4
                value_end = at + vlen
                if value_end > end:
                    raise RedoError("redo record ends inside a value")
                append((key, record[at:value_end]))
                at = value_end
            elif kind == DELETE:
                append((key, None))
            else:
                raise RedoError(f"redo record has a change of unknown kind {kind}")
    except struct.error:
        raise RedoError("redo record ends inside a change's header") from None
    if at != end:
        raise RedoError(f"redo record has {end - at} byte(s) after its {count} change(s)")
    return out
