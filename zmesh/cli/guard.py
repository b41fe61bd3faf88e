"""``zmesh guard install`` and ``zmesh guard check``: a git pre-commit hook that refuses a commit
touching paths another live agent holds exclusively.

Rules these keep:

* The hook chains: an existing pre-commit hook is kept beside ours
  (``pre-commit.zmesh-chained``) and runs after our check passes. Installing again
  rewrites only our part.
* It refuses a commit only for an exclusive reservation held by *another* agent whose
  pattern matches a staged path (zmesh/protocol/globs.py). It names the path, the holder, the
  pattern and when the reservation lapses. The committing agent is ``--agent`` or
  ``$ZMESH_AGENT``.
* It never blocks a commit on its own trouble, and never hangs. If the broker does not
  answer within ``--timeout`` (default 1 s), or git cannot list the staged paths, it warns
  on stderr and lets the commit through.
* ``ZMESH_GUARD=warn`` only warns; ``ZMESH_GUARD=off`` skips the check.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import click

from ..protocol import globs
from .. import protocol
from ..client import Client
from ..errors import UsageError, ZmeshError
from . import main
from ._options import IdType, Seconds
from ._output import Ctx, pass_ctx

MARK = "# zmesh guard: installed by `zmesh guard install`"
CHAINED = "pre-commit.zmesh-chained"


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise OSError(f"git {' '.join(args)} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _repository(repo: Path) -> Path:
    """The repository's top directory, or the usage error naming --repo."""
    try:
        return Path(_git(repo, "rev-parse", "--show-toplevel").strip())
    except (OSError, subprocess.SubprocessError):
        raise UsageError(f"--repo {str(repo)[:200]!r} is not inside a git repository", {"field": "repo"}) from None


@main.group()
def guard() -> None:
    """A git pre-commit hook that refuses commits touching paths another agent reserved."""


@guard.command("install")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="The git repository (its hooks directory gets the pre-commit hook).")
@click.option("--agent", type=IdType("id"), default=None,
              help="The agent committing in this repository (default: $ZMESH_AGENT at commit time).")
@pass_ctx
def guard_install(ctx: Ctx, repo: Path, agent: str | None) -> None:
    """Install (or refresh) the pre-commit hook in REPO, keeping any hook already there."""
    top = _repository(repo)
    hooks = Path(_git(top, "rev-parse", "--git-path", "hooks").strip())
    if not hooks.is_absolute():
        hooks = top / hooks
    hooks.mkdir(parents=True, exist_ok=True)
    hook = hooks / "pre-commit"
    if hook.exists() and MARK not in hook.read_text(errors="replace"):
        hook.replace(hooks / CHAINED)  # the existing hook runs after our check
    argv = [sys.executable, "-m", "zmesh"]
    if ctx.broker:
        argv += ["--broker", ctx.broker]
    argv += ["guard", "check", "--repo", "."]
    if agent:
        argv += ["--agent", agent]
    hook.write_text(f"""#!/bin/sh
{MARK}
{shlex.join(argv)} || exit 1
chained="$(dirname "$0")/{CHAINED}"
if [ -x "$chained" ]; then exec "$chained" "$@"; fi
""")
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    click.echo(f"zmesh guard installed in {hook}" + (f" (chaining {hooks / CHAINED})" if (hooks / CHAINED).exists()
                                                     else ""))


@guard.command("check")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="The git repository whose staged paths are checked.")
@click.option("--agent", type=IdType("id"), default=None, help="The agent committing (default: $ZMESH_AGENT).")
@click.option("--timeout", "timeout_s", type=Seconds(0.05, 10.0), default=1.0, show_default=True,
              help="Seconds to wait for the broker; past them the commit goes through with a warning.")
@pass_ctx
def guard_check(ctx: Ctx, repo: Path, agent: str | None, timeout_s: float) -> None:
    """Exit 1 if a staged path matches an exclusive reservation of another agent (ZMESH_GUARD=warn:
    warn only; =off: skip). The broker or git unavailable: warn and exit 0."""
    mode = os.environ.get("ZMESH_GUARD", "block").strip().lower()
    if mode == "off":
        return
    if mode not in ("block", "warn"):
        raise UsageError(f"ZMESH_GUARD must be block, warn or off, not {mode!r}", {"field": "ZMESH_GUARD"})
    me = agent
    if me is None and os.environ.get("ZMESH_AGENT"):
        try:
            me = protocol.KINDS["id"]("ZMESH_AGENT", os.environ["ZMESH_AGENT"])
        except ZmeshError as exc:
            raise UsageError(exc.message, {"field": "ZMESH_AGENT"}) from None
    top = _repository(repo)
    try:  # paths relative to the top directory, as reservation patterns are
        staged = [p for p in _git(top, "diff", "--cached", "--name-only", "-z").split("\0") if p]
    except (OSError, subprocess.SubprocessError) as exc:
        click.echo(f"zmesh guard: cannot list the staged paths ({exc}); not checked", err=True)
        return
    if not staged:
        return
    client = Client(ctx.endpoint(), timeout=timeout_s, heartbeat=False)
    try:
        held = [r for r in client.reservations() if r["mode"] == "exclusive" and r["agent"] != me]
    except ZmeshError as exc:
        click.echo(f"zmesh guard: {exc.message}; the commit is not checked", err=True)
        return
    finally:
        client.close()
    clashes = [(path, r) for path in staged for r in held if globs.matches(r["pattern"], path)]
    for path, r in clashes:
        lapse = "with its lease" if r["expires_in"] is None else f"in {r['expires_in']:g} s"
        click.echo(f"zmesh guard: {path} is reserved exclusively by '{r['agent']}' (pattern {r['pattern']}, "
                   f"lapses {lapse})", err=True)
    if clashes and mode == "block":
        click.echo("zmesh guard: commit refused (ZMESH_GUARD=warn to only warn)", err=True)
        raise SystemExit(1)
