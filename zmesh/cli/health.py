"""``zmesh health``: is the broker healthy? For scripts, probes and operators.

Rules: the answer is the broker's ``health`` op, printed as it came (``--json``) or as a
summary (broker id, uptime, seq, store size, map use, commit p95, free disk). Exit 0
healthy; exit 1 degraded, each reason on its own line after the summary (stdout: the
answer is data, not an error); exit 3 when the broker does not answer, like every command.
The thresholds are the broker's (zmesh/broker/metrics.py) and come in the answer.
"""

from __future__ import annotations

from typing import Any

from . import EXIT_OK, EXIT_REFUSED, main
from ._output import Ctx, emit, esc, json_flag, pass_ctx


def size(n: int | None) -> str:
    """Bytes as people read them: 512 B, 1.5 MiB, 8.0 GiB."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop returns


def lines(d: dict[str, Any]) -> list[str]:
    p95 = "n/a" if d["commit_p95_ms"] is None else f"{d['commit_p95_ms']:g} ms"
    use = "?" if d["map_use"] is None else f"{d['map_use']:.1%}"
    free = "?" if d["disk_free_ratio"] is None else f"{d['disk_free_ratio']:.0%}"
    return [(f"{'healthy' if d['healthy'] else 'degraded'}: broker {esc(d['broker_id'])} v{esc(d['version'])} "
             f"uptime={d['uptime']:.0f}s seq={d['seq']}"),
            (f"store: {size(d['store_bytes'])} on disk, {size(d['used_bytes'])} used of a {size(d['map_size'])} map "
             f"({use}); commit p95 {p95} over {d['commits']} batch(es); {size(d['disk_free_bytes'])} free on its "
             f"disk ({free})"),
            *(esc(reason) for reason in d["reasons"])]


@main.command()
@json_flag
@pass_ctx
def health(ctx: Ctx) -> int:
    """Is the broker healthy? Prints its id, uptime, sequence, store size, map use, commit p95 and
    free disk. Exit 0 healthy; exit 1 degraded (the LMDB map nearly full, slow commits, the data
    disk nearly full), each reason on its own line; exit 3 if the broker does not answer."""
    data = ctx.client().health()
    emit(ctx, data, lines)
    return EXIT_OK if data["healthy"] else EXIT_REFUSED
