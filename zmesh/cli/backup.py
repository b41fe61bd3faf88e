"""``zmesh backup DEST`` and ``zmesh restore SRC``: a copy of the broker's data taken while it
serves, and a data directory made from one.

Rules:

* ``backup`` asks the broker (the admin op ``backup``: an admin key when security is on):
  the copy is LMDB's consistent, compacted copy, written by the broker into DEST on ITS host;
  a relative DEST is made absolute here, for a broker on this host. It waits for the copy
  (``--wait``), so exit 0 means the copy is whole.
* ``restore`` works offline, on this host: it copies a backup's data file into a data
  directory no broker is using (it holds the directory's broker.lock meanwhile), never over
  existing data unless ``--force`` (the old file is kept beside it, renamed), then opens the
  result as a broker would (schema checked, upgraded if older) and says what it holds.
  A broker started on that directory recovers every task and claim of the copy.
* The keys (DATA/keys) are not in a backup: copy them apart (the broker's secret key is
  sensitive), or clients that pinned the broker's key refuse the restored one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from typing import Any

import click

from ..config import BrokerConfig
from ..core.eventlog import read_counter
from ..errors import Conflict, InvalidArgument, StoreError
from ..protocol import CONTROL_CHARS, STATUSES, escape_controls
from ..store import LmdbStore, SCHEMA_VERSION
from ..broker_jobs import DATA_FILE
from . import main
from ._options import Seconds
from .security import KeyDir
from ._output import Ctx, emit, esc, json_flag, pass_ctx


class HostPath(click.ParamType):
    """A path on the broker's host: not empty, no control characters, at most 4,096 bytes
    (whether it exists is the broker's to say: it may be another host)."""

    name = "PATH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        if not text.strip() or CONTROL_CHARS.search(text) or len(text.encode()) > 4096:
            self.fail(f"{escape_controls(text[:80])!r} is not a path (not empty, no control characters, at most "
                      "4096 bytes)", param, ctx)
        return text


@main.command("backup")
@click.argument("dest", type=HostPath())
@click.option("--wait", type=Seconds(1, 86400), default=3600, show_default=True,
              help="Seconds to wait for the copy to finish (beyond --timeout).")
@json_flag
@pass_ctx
def backup(ctx: Ctx, dest: str, wait: float) -> None:
    """Copy the broker's data into DEST (a new or empty directory on the broker's host) while it
    serves: LMDB's consistent, compacted copy, with every write acknowledged before it began."""
    dest = os.path.abspath(os.path.expanduser(dest))
    result = ctx.client().backup(dest, wait=wait)
    emit(ctx, result, lambda r: f"backup of broker {esc(r['broker_id'])} in {esc(r['dest'])}: {r['bytes']} bytes "
                                f"in {r['seconds']:.3f} s (every write up to event seq {r['seq']})")


@main.command("restore")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.option("--data", metavar="DIR", type=KeyDir(), help="Data directory to restore into (default: the broker's, from "
              "ZMESH_DATA / ZMESH_CONFIG, else ~/.local/share/zmesh).")
@click.option("--force", is_flag=True, help="Replace data that is there (the old data.mdb is kept, renamed).")
@json_flag
@pass_ctx
def restore(ctx: Ctx, src: str, data: str | None, force: bool) -> None:
    """Make a data directory from a backup SRC (made by `zmesh backup`), with no broker running on
    it; start the broker there to serve what the backup holds."""
    target = os.path.abspath(BrokerConfig.load(data=data).data)  # --data checked as the broker's
    source = os.path.join(src, DATA_FILE)
    if not os.path.isfile(source):
        raise InvalidArgument(f"SRC {src} holds no {DATA_FILE}: not a backup made by `zmesh backup`",
                              {"field": "SRC"})
    os.makedirs(target, mode=0o700, exist_ok=True)
    kept = _put_in_place(source, target, force)
    try:
        store = LmdbStore(target)
    except StoreError as exc:
        os.unlink(os.path.join(target, DATA_FILE))
        if kept:
            os.rename(kept, os.path.join(target, DATA_FILE))
        raise StoreError(f"{src} cannot be restored: {exc.message}", {"field": "src"}) from None
    try:
        with store.read() as txn:
            tasks = {s: read_counter(txn, b"count:" + s.encode()) for s in STATUSES}
            seq = read_counter(txn, b"seq")
        out: dict[str, Any] = {"data": target, "broker_id": store.broker_id, "schema": SCHEMA_VERSION,
                               "seq": seq, "tasks": tasks, "kept": kept}
    finally:
        store.close()
    emit(ctx, out, _human)


def _put_in_place(source: str, target: str, force: bool) -> str | None:
    """Copy the backup's data file into ``target`` under its broker.lock; returns where the data
    that was there went (None: there was none)."""
    lock = open(os.path.join(target, "broker.lock"), "a+")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StoreError(f"data directory {target} is in use by a running broker: stop it first",
                             {"field": "data"}) from None
        there = os.path.join(target, DATA_FILE)
        kept = None
        if os.path.exists(there):
            if not force:
                raise Conflict(f"{target} already holds data ({DATA_FILE}); restore into an empty directory, or "
                               "--force to replace it (the old file is kept, renamed)", {"field": "data"})
            kept = f"{there}.before-restore-{time.strftime('%Y%m%dT%H%M%S')}"
            os.rename(there, kept)
        tmp = there + ".restoring"
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, there)
        try:
            os.unlink(os.path.join(target, "lock.mdb"))  # the reader table of the data that was there
        except FileNotFoundError:
            pass
        return kept
    finally:
        lock.close()


def _human(d: dict[str, Any]) -> list[str]:
    counts = ", ".join(f"{n} {s}" for s, n in d["tasks"].items() if n) or "no tasks"
    lines = [f"restored broker {esc(d['broker_id'])} into {esc(d['data'])}: {counts}; event seq {d['seq']}",
             "start it with: zmesh broker --data " + esc(d["data"])]
    if d["kept"]:
        lines.append(f"the data that was there is kept as {esc(d['kept'])}")
    return lines
