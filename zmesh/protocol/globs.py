"""Path patterns for reservations: what a pattern may say, what it matches, and whether two
patterns can ever match the same path.

Rules it keeps:

* A pattern is a path relative to the repository root, ``/``-separated, in segments:
  ``*`` matches any run of characters inside one segment (not ``/``), ``?`` one character,
  and a segment that is exactly ``**`` matches zero or more whole segments. So ``src/**``
  covers ``src`` itself and everything under it, and a trailing ``/`` means the same
  (``src/`` is ``src/**``). Nothing else is special: character classes and braces are
  refused rather than read literally, so a pattern never means less than its author thought.
* :func:`normalize` is the one place a pattern is checked and put in canonical form (no
  ``./``, no empty segments, no repeated ``**``); every other function expects its output.
  A refusal is a ``ValueError`` whose message says what is wrong, for the caller to turn
  into a ``bad_request`` naming its field.
* :func:`overlaps` decides exactly, not by comparing strings: two patterns overlap when
  some path (non-empty segments, at least one) matches both. It walks the product of the
  two patterns (segment by segment, and inside a segment character by character), so it
  costs O(len(a) * len(b)) and never enumerates paths. tests/test_globs.py checks it
  against brute force over every path of a small universe.
* Pure: no I/O, no state.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Sequence

#: longest pattern accepted, in bytes of UTF-8: a reservation's key holds the pattern and an
#: agent id (up to 200 bytes), and an LMDB key is at most 511 bytes; and most segments
MAX_PATTERN_BYTES = 256
MAX_SEGMENTS = 64
#: characters a pattern may not contain: glob syntax zmesh does not implement, and what
#: would make a segment ambiguous
REFUSED = {"[": "character classes ([...]) are not supported", "]": "character classes ([...]) are not supported",
           "{": "braces ({a,b}) are not supported: reserve each pattern", "}": "braces ({a,b}) are not supported: "
           "reserve each pattern", "\\": "use / to separate segments (no backslashes)", "\0": "NUL is not allowed"}
GLOBSTAR = "**"


def normalize(pattern: str) -> str:
    """The canonical form of ``pattern``, or ValueError saying why it is refused."""
    if not isinstance(pattern, str):
        raise ValueError("a pattern must be a string")
    if not pattern:
        raise ValueError("a pattern must not be empty")
    if len(pattern) > MAX_PATTERN_BYTES // 4 and len(pattern.encode("utf-8", "surrogatepass")) > MAX_PATTERN_BYTES:
        raise ValueError(f"a pattern is at most {MAX_PATTERN_BYTES} bytes of UTF-8")
    for char, why in REFUSED.items():
        if char in pattern:
            raise ValueError(why)
    if pattern.startswith("/"):
        raise ValueError("a pattern is relative to the repository root (no leading /)")
    directory = pattern.endswith("/")
    segments: list[str] = []
    for seg in pattern.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            raise ValueError("a pattern may not contain '..'")
        if GLOBSTAR in seg and seg != GLOBSTAR:
            raise ValueError(f"'**' must be a whole segment (got {seg!r}); use '*' inside a segment")
        if seg == GLOBSTAR and segments and segments[-1] == GLOBSTAR:
            continue  # a/**/**/b is a/**/b
        segments.append(seg)
    if directory and (not segments or segments[-1] != GLOBSTAR):
        segments.append(GLOBSTAR)
    if not segments:
        raise ValueError("a pattern must name at least one segment")
    if len(segments) > MAX_SEGMENTS:
        raise ValueError(f"a pattern has at most {MAX_SEGMENTS} segments")
    return "/".join(segments)


def matches(pattern: str, path: str) -> bool:
    """Does the (normalized) pattern match ``path`` (a relative path, ``/``-separated)?"""
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    return bool(parts) and _match_path(tuple(pattern.split("/")), parts)


def overlaps(a: str, b: str) -> bool:
    """Can some path match both (normalized) patterns?"""
    if a == b:
        return True
    return _overlap_path(tuple(a.split("/")), tuple(b.split("/")))


# ---------------------------------------------------------------- matching one path
def _match_path(pat: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    @lru_cache(maxsize=None)
    def go(i: int, j: int) -> bool:
        if i == len(pat):
            return j == len(parts)
        if pat[i] == GLOBSTAR:  # zero segments, or one more and stay
            return go(i + 1, j) or (j < len(parts) and go(i, j + 1))
        return j < len(parts) and _match_segment(pat[i], parts[j]) and go(i + 1, j + 1)

    return go(0, 0)


def _match_segment(seg: str, text: str) -> bool:
    @lru_cache(maxsize=None)
    def go(i: int, j: int) -> bool:
        if i == len(seg):
            return j == len(text)
        if seg[i] == "*":
            return go(i + 1, j) or (j < len(text) and go(i, j + 1))
        return j < len(text) and (seg[i] == "?" or seg[i] == text[j]) and go(i + 1, j + 1)

    return go(0, 0)


# ---------------------------------------------------------------- overlap of two patterns
def _overlap_path(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Segment by segment: a ``**`` takes any number of segments, two segment patterns
    share a segment when some name matches both."""
    return _common(a, b, GLOBSTAR, segments_overlap)


@lru_cache(maxsize=4096)
def segments_overlap(a: str, b: str) -> bool:
    """Can one non-empty segment name match both segment patterns (``*``, ``?``, literals)?"""
    return _common(a, b, "*", _same_char)


def _same_char(x: str, y: str) -> bool:
    return x == y or x == "?" or y == "?"


def _common(a: Sequence[str], b: Sequence[str], star: str, accept: Callable[[str, str], bool]) -> bool:
    """Is there a non-empty sequence of units that both token sequences match? ``star``
    matches zero or more units; any other two tokens match one unit together when
    ``accept`` says so (a star with any other token always can: a valid token matches some
    unit). A search over states (i, j, a unit taken yet), each visited once."""
    seen: set[tuple[int, int, bool]] = set()
    stack = [(0, 0, False)]
    while stack:
        state = stack.pop()
        if state in seen:
            continue
        seen.add(state)
        i, j, some = state
        if i == len(a) and j == len(b):
            if some:
                return True
            continue
        ta = a[i] if i < len(a) else None
        tb = b[j] if j < len(b) else None
        if ta == star:
            stack.append((i + 1, j, some))  # it takes no (more) units
        if tb == star:
            stack.append((i, j + 1, some))
        if ta is None or tb is None:
            continue
        if ta == star or tb == star or accept(ta, tb):  # one unit both take: a star stays
            stack.append((i if ta == star else i + 1, j if tb == star else j + 1, True))
    return False
