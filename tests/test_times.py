"""zmesh/protocol/times.py: the one reader of wall-clock times (gateway fields, the CLI's --since)."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zmesh.protocol import times
from zmesh.errors import BadRequest

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
LATEST = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)

moments = st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(9999, 12, 30),
                       timezones=st.just(UTC))
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))


@given(moments, offsets)
def test_an_iso_time_in_any_zone_is_its_instant(when: dt.datetime, zone: dt.timezone) -> None:
    local = when.astimezone(zone)
    assert times.parse_time("t", local.isoformat()) == pytest.approx(when.timestamp(), abs=1e-6)


@given(moments)
def test_no_zone_is_utc_and_z_is_utc(when: dt.datetime) -> None:
    naive = when.replace(tzinfo=None).isoformat()  # what datetime.utcnow().isoformat() writes
    assert times.parse_time("t", naive) == pytest.approx(when.timestamp(), abs=1e-6)
    assert times.parse_time("t", naive + "Z") == times.parse_time("t", naive)
    assert times.parse_time("t", naive + "z") == times.parse_time("t", naive)


@given(st.floats(min_value=0, max_value=times.MAX_TIME_S) | st.integers(min_value=0, max_value=int(times.MAX_TIME_S)))
def test_unix_seconds_are_taken_as_they_are(seconds: float) -> None:
    assert times.parse_time("t", seconds) == float(seconds)


def test_the_range_is_the_clock_of_1970_to_9999() -> None:
    assert times.parse_time("t", "1970-01-01T00:00:00Z") == 0.0
    assert times.parse_time("t", LATEST.isoformat()) == times.MAX_TIME_S == LATEST.timestamp()
    for outside in (-0.5, times.MAX_TIME_S + 1, "1969-12-31T23:59:59Z", "0001-01-01T00:00:00+05:00", 10**400,
                    math.inf, -math.inf, math.nan):
        with pytest.raises(BadRequest, match="field 't'"):
            times.parse_time("t", outside)


@pytest.mark.parametrize("bad", ["", " ", "now", "1731416400", "2025-11-12T25:00:00", "2025-11-12T13:00:00+25:00",
                                 "x" * 65, "\x1b[2J2025-11-12", True, False, None, [], {}, b"2025-11-12"])
def test_anything_else_is_a_bad_request_naming_the_field(bad: object) -> None:
    with pytest.raises(BadRequest) as info:
        times.parse_time("waiting_since", bad)
    assert info.value.details == {"field": "waiting_since"}
    assert "waiting_since" in info.value.message and "\x1b" not in info.value.message
    assert "\n" not in info.value.message


def test_a_person_s_time_without_a_zone_is_local() -> None:
    text = "2025-11-12T13:00:00"
    assert times.iso_seconds(text, naive_utc=False) == dt.datetime.fromisoformat(text).astimezone().timestamp()


def test_durations_ago() -> None:
    assert times.duration_ago("90s", 1000.0) == 910.0
    assert times.duration_ago("2h", 10_000.0) == 2800.0
    assert times.duration_ago("1.5m", 100.0) == 10.0
    assert times.duration_ago("7d", 5.0) == 0.0  # never below the epoch
    assert times.duration_ago("10", 100.0) is None and times.duration_ago("2025-01-01", 1.0) is None
