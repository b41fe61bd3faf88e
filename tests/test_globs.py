"""Path patterns (zmesh/globs.py): normalization, matching, and overlap checked against
brute force over every path of a small universe."""

from __future__ import annotations

import fnmatch
import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmesh.protocol.globs import matches, normalize, overlaps, segments_overlap

#: every path of 1-3 segments, each 1-3 characters of "ab": with patterns of at most two
#: segments of at most two tokens over the same letters, any overlap has a witness here
#: (a wildcard never needs a third letter; a segment needs at most the letters of both)
_NAMES = ["".join(p) for n in (1, 2, 3) for p in itertools.product("ab", repeat=n)]
UNIVERSE = ["/".join(p) for n in (1, 2, 3) for p in itertools.product(_NAMES, repeat=n)]


def _brute_matches(pattern: str, path: str) -> bool:
    """Segment by segment with fnmatch (no '/' in a segment, so its '*' cannot cross one)."""
    pat, parts = pattern.split("/"), path.split("/")

    def go(i: int, j: int) -> bool:
        if i == len(pat):
            return j == len(parts)
        if pat[i] == "**":
            return go(i + 1, j) or (j < len(parts) and go(i, j + 1))
        return j < len(parts) and fnmatch.fnmatchcase(parts[j], pat[i]) and go(i + 1, j + 1)

    return go(0, 0)


_segment = st.lists(st.sampled_from(["a", "b", "*", "?"]), min_size=1, max_size=2).map("".join)
_pattern = st.lists(st.one_of(_segment, st.just("**")), min_size=1, max_size=2).map(lambda s: normalize("/".join(s)))


@settings(max_examples=300, deadline=None)
@given(_pattern, _pattern)
def test_overlap_is_exactly_a_common_path(a: str, b: str) -> None:
    brute = any(_brute_matches(a, p) and _brute_matches(b, p) for p in UNIVERSE)
    assert overlaps(a, b) == brute, (a, b)
    assert overlaps(b, a) == brute


@settings(max_examples=300, deadline=None)
@given(_pattern, st.sampled_from(UNIVERSE))
def test_matches_agrees_with_fnmatch_per_segment(pattern: str, path: str) -> None:
    assert matches(pattern, path) == _brute_matches(pattern, path)


@settings(max_examples=200, deadline=None)
@given(_segment, _segment)
def test_segment_overlap_against_every_short_name(a: str, b: str) -> None:
    names = ["".join(p) for n in range(1, 5) for p in itertools.product("abc", repeat=n)]
    brute = any(fnmatch.fnmatchcase(n, a) and fnmatch.fnmatchcase(n, b) for n in names)
    assert segments_overlap(a, b) == brute


@pytest.mark.parametrize("a, b, expected", [
    ("src/**/*.py", "src/zmesh/broker.py", True),
    ("src/**/*.py", "src/zmesh/README.md", False),
    ("src/**", "src", True),  # a directory reservation covers the directory itself
    ("src/", "src/a/b/c.txt", True),
    ("docs/*.md", "src/*.md", False),
    ("*.py", "src/x.py", False),  # * stays inside one segment
    ("**/*.py", "a/b/c.py", True),
    ("a*", "*b", True),
    ("a?", "?a", True),
    ("a*c", "b*", False),
    ("**", "anything/at/all", True),
])
def test_overlap_examples(a: str, b: str, expected: bool) -> None:
    assert overlaps(normalize(a), normalize(b)) is expected
    assert overlaps(normalize(b), normalize(a)) is expected


@pytest.mark.parametrize("raw, canonical", [
    ("./src//zmesh/", "src/zmesh/**"), ("a/**/**/b", "a/**/b"), ("src/", "src/**"), ("**/", "**"),
    ("a/./b", "a/b"), ("./", "**"),  # the root directory: everything
])
def test_normalize(raw: str, canonical: str) -> None:
    assert normalize(raw) == canonical
    assert normalize(canonical) == canonical  # idempotent


@pytest.mark.parametrize("raw, why", [
    ("", "empty"), ("/etc/passwd", "relative"), ("a/../b", "'..'"), ("src/[ab].py", "character classes"),
    ("{a,b}", "braces"), ("a\\b", "backslashes"), ("a**b", "whole segment"), (".", "at least one segment"),
    ("x" * 2000, "at most"), ("/".join(["a"] * 100), "segments"),
])
def test_normalize_refuses_with_a_reason(raw: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        normalize(raw)
