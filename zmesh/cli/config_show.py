"""``zmesh config show``: the broker configuration that a ``zmesh broker`` started here, now,
would run with, and where each value came from.

Rules: it reads exactly what the broker reads (``BrokerConfig.load``: defaults < the file
named by ``--config`` or ZMESH_CONFIG < ZMESH_* env), with the same checks, so a bad key or
value fails here as it would at start (exit 2, one line naming the key). Flags of ``zmesh
broker`` are not known here: they rank above everything shown. The text output is a valid
TOML file (``[broker]``, one ``key = value`` line each, the source as a comment), so it can
be saved and used as a config file (a path left empty, meaning its default place, is shown
commented out: a file may not set it to ""); ``--json`` gives ``{config, sources, file}``.
"""

from __future__ import annotations

import os
from typing import Any

import click

from ..config import SETTINGS, BrokerConfig, toml_text
from . import main
from ._output import Ctx, emit, json_flag, pass_ctx


@main.group("config")
def config_group() -> None:
    """Show the broker configuration: effective values and their sources."""


@config_group.command("show")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config file to read (env ZMESH_CONFIG), as `zmesh broker --config` would.")
@json_flag
@pass_ctx
def show(ctx: Ctx, config_path: str | None) -> None:
    """Print the effective broker configuration (defaults < file < ZMESH_* env) as TOML, each
    value with where it came from: default, file PATH or env ZMESH_X."""
    cfg = BrokerConfig.load(config_path)
    path = config_path or os.environ.get("ZMESH_CONFIG") or None
    values = {s.name: getattr(cfg, s.name) for s in SETTINGS}
    emit(ctx, {"config": values, "sources": dict(cfg.sources), "file": path}, _human)


def _human(d: dict[str, Any]) -> list[str]:
    width = max(len(f"{k} = {toml_text(v)}") for k, v in d["config"].items())
    lines = ["# effective zmesh broker configuration: defaults < "
             + (f"file {d['file']}" if d["file"] else "no file") + " < ZMESH_* env (flags of `zmesh broker` "
             "rank above all)", "[broker]"]
    for key, value in d["config"].items():
        line = f"{key} = {toml_text(value)}"
        if value == "":  # an empty path means "the default place": a file may not say "", so it is a comment
            line = "# " + line
        lines.append(f"{line:<{width}}  # {d['sources'][key]}")
    return lines

