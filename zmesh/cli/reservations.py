"""``zmesh reserve``, ``release-paths``, ``reservations``: path reservations from the shell.

Rules: patterns are checked here exactly as the broker checks them (the field kind
``glob``), so a bad one is a usage error (exit 2) naming it before anything is sent; a
conflict is exit 1 with the holder, its pattern and when it lapses; releasing a pattern the
agent does not hold is not_found (exit 1); ``--json`` prints the broker's reply (reservations:
``{reservations: [...]}``). Text from users is escaped in human output.
"""

from __future__ import annotations

from typing import Any

import click

from . import main
from ._options import IdType, field_option
from ._output import Ctx, emit, esc, json_flag, pass_ctx


def _expiry(expires_in: float | None) -> str:
    return "no expiry" if expires_in is None else f"lapses in {expires_in:g} s"


@main.command()
@click.argument("paths", nargs=-1, required=True, type=IdType("glob"))
@click.option("--shared", is_flag=True, help="Hold them shared: other shared holders may overlap (exclusive by default).")
@field_option("reserve", "ttl", metavar="SECONDS")
@field_option("reserve", "wait_s", "--wait", "wait_s", metavar="SECONDS", default=0.0,
              help="When refused, wait this long in the broker's first-come-first-served queue.")
@field_option("reserve", "agent", help="The agent holding them (its lease holds them).")
@json_flag
@pass_ctx
def reserve(ctx: Ctx, paths: tuple[str, ...], shared: bool, ttl: float | None, wait_s: float, agent: str) -> None:
    """Reserve PATHS (glob patterns: * and ? inside a segment, ** for any depth, a trailing /
    for everything below) for AGENT, all or none. Exit 1 when another agent holds an
    overlapping pattern that excludes this (the refusal names it and when it lapses), at
    once or after --wait seconds in the queue."""
    reply = ctx.client().reserve(list(paths), shared=shared, ttl=ttl, wait=wait_s, agent=agent)
    emit(ctx, reply, lambda d: [f"{esc(r['pattern'])}\t{r['mode']}\ttoken {r['token']}\t{_expiry(r['expires_in'])}"
                                + ("\t(renewed)" if r["renewed"] else "") for r in d["reservations"]])


@main.command("release-paths")
@click.argument("paths", nargs=-1, type=IdType("glob"))
@field_option("release_paths", "agent", help="The agent releasing them.")
@json_flag
@pass_ctx
def release_paths(ctx: Ctx, paths: tuple[str, ...], agent: str) -> None:
    """Release AGENT's reservations on PATHS, or every one it holds when none are named.
    Exit 1 if it does not hold one of them."""
    released = ctx.client().release_paths(list(paths), agent=agent)
    emit(ctx, {"agent": agent, "released": released},
         lambda d: [f"released {esc(p)}" for p in d["released"]] or [f"{esc(agent)} held no reservations"])


@main.command()
@field_option("reservations", "agent", help="Only this agent's.")
@field_option("reservations", "path", metavar="PATH", help="Only those overlapping this path or pattern.")
@json_flag
@pass_ctx
def reservations(ctx: Ctx, agent: str | None, path: str | None) -> None:
    """Reservations held now, by pattern then agent; then the reserves waiting their turn."""
    def human(d: dict[str, Any]) -> list[str]:
        held = [f"{esc(r['pattern'])}\t{esc(r['agent'])}\t{r['mode']}\ttoken {r['token']}\t{_expiry(r['expires_in'])}"
                for r in d["reservations"]] or ["no reservations"]
        return held + [f"waiting: {esc(w['agent'])}\t{w['mode']}\t{esc(' '.join(w['paths']))}\t"
                       f"gives up in {w['gives_up_in']:g} s" for w in d["waiting"]]

    emit(ctx, ctx.client().reservation_state(agent=agent, path=path), human)
