"""Latency histograms (HDR, microseconds): recorded in workers, merged in the harness,
stored raw in the JSON output so any percentile can be recomputed later."""

from __future__ import annotations

from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 120_000_000  # two minutes
DIGITS = 3
PERCENTILES = (50.0, 95.0, 99.0)


def new() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def record_ns(h: HdrHistogram, ns: int) -> None:
    h.record_value(max(LOWEST_US, min(HIGHEST_US, ns // 1000)))


def encode(h: HdrHistogram) -> str:
    return h.encode().decode() if isinstance(h.encode(), bytes) else h.encode()


def merge(encoded: list[str]) -> HdrHistogram:
    out = new()
    for e in encoded:
        out.decode_and_add(e)
    return out


def summary(h: HdrHistogram) -> dict[str, Any]:
    if h.get_total_count() == 0:
        return {"count": 0}
    out: dict[str, Any] = {"count": h.get_total_count()}
    for p in PERCENTILES:
        out[f"p{p:g}"] = h.get_value_at_percentile(p)
    out["max"] = h.get_max_value()
    out["mean"] = round(h.get_mean_value(), 1)
    return out


def curve(h: HdrHistogram) -> list[tuple[float, int]]:
    """(percentile, µs) points for the percentile plot."""
    points = []
    for p in (0, 10, 25, 50, 75, 90, 95, 97.5, 99, 99.5, 99.9, 99.99, 100):
        points.append((p, h.get_value_at_percentile(p)))
    return points
