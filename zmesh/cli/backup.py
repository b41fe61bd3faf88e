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
* The broker's keys go with the data (``--no-keys`` leaves them out): its key pair and the
  public keys its allow-list admits, in DEST/keys (broker_jobs.py). ``restore`` puts them
  where the restored broker reads them (``key_file`` and ``authorized_keys`` of the config,
  by default DATA/keys), so a secure broker comes back with the identity its clients pinned
  and admits the same clients. Keys already there are refused, or kept renamed with
  ``--force``, as the data is; all that is checked before anything is moved.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path
from typing import Any

import click

from ..config import BrokerConfig
from ..core.eventlog import read_counter
from ..errors import Conflict, InvalidArgument, StoreError
from ..protocol import CONTROL_CHARS, STATUSES, escape_controls
from ..store.checkpoints import History
from ..store import LmdbStore, SCHEMA_VERSION
from ..broker.jobs import BACKUP_ALLOWED, BACKUP_PAIR, DATA_FILE, KEYS_DIR
from ..transport.keys import copy_allowed, copy_pair, public_file
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
@click.option("--keys/--no-keys", default=True, show_default=True,
              help="Copy the broker's key pair and allowed client keys into DEST/keys too.")
@json_flag
@pass_ctx
def backup(ctx: Ctx, dest: str, wait: float, keys: bool) -> None:
    """Copy the broker's data into DEST (a new or empty directory on the broker's host) while it
    serves: LMDB's consistent, compacted copy, with every write acknowledged before it began."""
    dest = os.path.abspath(os.path.expanduser(dest))
    result = ctx.client().backup(dest, keys=keys, wait=wait)
    emit(ctx, result, _human_backup)


def _human_backup(r: dict[str, Any]) -> list[str]:
    lines = [f"backup of broker {esc(r['broker_id'])} in {esc(r['dest'])}: {r['bytes']} bytes "
             f"in {r['seconds']:.3f} s (every write up to event seq {r['seq']})"]
    keys = r.get("keys")
    if keys is None:
        lines.append("keys: not copied (--no-keys)")
    elif keys["broker_key"] or keys["authorized"]:
        lines.append(f"keys: broker key {keys['broker_key'] or 'none'} and {keys['authorized']} client key(s) "
                     f"in {esc(os.path.join(r['dest'], KEYS_DIR))} (the secret key: mode 0600)")
    else:
        lines.append("keys: none (the broker never ran secure)")
    return lines


@main.command("restore")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.option("--data", metavar="DIR", type=KeyDir(), help="Data directory to restore into (default: the broker's, from "
              "ZMESH_DATA / ZMESH_CONFIG, else ~/.local/share/zmesh).")
@click.option("--force", is_flag=True, help="Replace data and keys that are there (the old ones are kept, renamed).")
@click.option("--keys/--no-keys", default=True, show_default=True,
              help="Put the backup's keys where the restored broker reads them (key_file, authorized_keys).")
@json_flag
@pass_ctx
def restore(ctx: Ctx, src: str, data: str | None, force: bool, keys: bool) -> None:
    """Make a data directory from a backup SRC (made by `zmesh backup`), with no broker running on
    it; start the broker there to serve what the backup holds."""
    config = BrokerConfig.load(data=data)  # --data checked as the broker's
    target = os.path.abspath(config.data)
    source = os.path.join(src, DATA_FILE)
    if not os.path.isfile(source):
        raise InvalidArgument(f"SRC {src} holds no {DATA_FILE}: not a backup made by `zmesh backup`",
                              {"field": "SRC"})
    saved = Path(src, KEYS_DIR)
    keyed = keys and saved.is_dir()
    places = (config.key_path.absolute() if (saved / BACKUP_PAIR).is_file() else None,
              config.authorized_path.absolute() if (saved / BACKUP_ALLOWED).is_dir() else None)
    _refuse_if_in_use(target)  # first: a running broker is the refusal to give, not its keys or data
    if keyed:
        _check_key_places(places, force)  # before the data moves: a refusal leaves everything as it was
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
                               "seq": seq, "tasks": tasks, "kept": kept, "keys": None}
    finally:
        store.close()
    if keyed:
        out["keys"] = _restore_keys(saved, places)
    emit(ctx, out, _human)


#: (where the pair goes, where the allow-list goes): None for what the backup does not hold
Places = tuple[Path | None, Path | None]


def _key_files(places: Places) -> list[Path]:
    """What restoring keys would replace: the pair's files and the allow-list directory, where
    they exist."""
    pair, allowed = places
    public = None if pair is None else public_file(pair)
    return [p for p in (pair, public, allowed) if p is not None and (p.exists() or p.is_symlink())]


def _check_key_places(places: Places, force: bool) -> None:
    there = _key_files(places)
    if there and not force:
        raise Conflict(f"{there[0]} is already there; restore into a data directory without keys, --force to "
                       "replace them (the old ones are kept, renamed), or --no-keys", {"field": "keys"})


def _restore_keys(saved: Path, places: Places) -> dict[str, Any]:
    """The backup's keys into ``places`` (the pair file, the allow-list directory); what was
    there is kept renamed (--force was checked)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    kept = []
    for path in _key_files(places):
        aside = path.with_name(f"{path.name}.before-restore-{stamp}")
        os.rename(path, aside)
        kept.append(str(aside))
    pair, allowed = places
    return {"broker_key": pair and copy_pair(saved / BACKUP_PAIR, pair),
            "authorized": copy_allowed(saved / BACKUP_ALLOWED, allowed) if allowed else 0,
            "key_file": pair and str(pair), "authorized_keys": allowed and str(allowed), "kept": kept}


def _in_use(target: str) -> StoreError:
    return StoreError(f"data directory {target} is in use by a running broker: stop it first", {"field": "data"})


def _refuse_if_in_use(target: str) -> None:
    """Refused at once when a broker holds ``target``'s broker.lock (checked again, and held,
    while the data moves)."""
    path = os.path.join(target, "broker.lock")
    if not os.path.exists(path):
        return
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise _in_use(target) from None


def _put_in_place(source: str, target: str, force: bool) -> str | None:
    """Copy the backup's data file into ``target`` under its broker.lock; returns where the data
    that was there went (None: there was none)."""
    lock = open(os.path.join(target, "broker.lock"), "a+")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise _in_use(target) from None
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
        # the journal and snapshots there belong to the data that was there (kept with it)
        History(target, "").set_aside(f".before-restore-{time.strftime('%Y%m%dT%H%M%S')}")
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
    keys = d["keys"]
    if keys is not None:
        if keys["key_file"]:
            lines.append(f"broker key {keys['broker_key']} in {esc(keys['key_file'])}")
        if keys["authorized_keys"]:
            lines.append(f"{keys['authorized']} client key(s) in {esc(keys['authorized_keys'])}")
        lines.extend(f"the key(s) that were there are kept as {esc(k)}" for k in keys["kept"])
    return lines
