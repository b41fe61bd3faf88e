"""Journal recovery: how long a store takes to open after an OS crash, when it rebuilds
from its snapshot and replays a journal of N records (default 1,000,000), and, beside it,
how long it takes when it trusts the LMDB file (a broker crash: same boot).

``python -m bench.recovery [N] [--out DIR] [--profile]`` runs it alone: it prints a
one-line summary and, with ``--out``, writes ``DIR/recovery.json``; ``--profile`` adds one
more rebuild under cProfile (not timed) and prints its top entries. ``python -m bench``
runs it once (``--journal-records``; 20,000 with ``--quick``).

What is measured, step by step (every step in a temp dir, every open in a fresh process,
so a crash is a process that ends with ``os._exit``, no ``close()``):

1. The records. Running the real core for 1,000,000 claims needs 1,000,000 tasks created
   first, and those creates are journal records too (or a snapshot holding them), so the
   journal would not be N claim records. Instead, a few real claims are captured once:
   the real core (``zmesh.core.Core`` with the broker's default settings: audit of writes,
   an event log of 100,000, an audit trail of 1,000,000) claims tasks on an LmdbStore,
   and each claim's final change set (read after the commit, counters included) is kept.
   The claims are those of a registered agent that already holds a task (the harness's
   claim workload): per claim, the task record (~245 B) and its claim record (~77 B) in
   ``tasks``, one ``task.claimed`` event (~149 B), one audit record (~133 B), and five
   counters (``seq``, ``token``, ``count:claimed``, ``count:available``, ``audit``: 8 B
   each). Then N records of the same shape are written: the same tables and value sizes,
   each with its own task id (``task-%08d``, as long as the captured one), its own event
   seq and audit id; the trims follow the broker's defaults (the event that fell out of a
   100,000-event log is deleted, so from record 100,001 on a record carries that delete;
   the audit trail of 1,000,000 is never full here). Numbers inside the JSON values are the
   captured ones. A record is ~826 bytes (16 of them the journal's record header, the rest
   redo payload: 9 changes) while the event log fills, ~838 once each also deletes an event
   (10 changes): 838.8 MB for 1,000,000 records, 839 B each on average (measured, printed).
2. The journal. A child process opens ``LmdbStore(path, durability="none",
   checkpoint_bytes=1 << 62)`` (the first open takes the snapshot, at seq 0) and writes the
   N records, one write transaction each (``with store.write() as txn: txn.put/delete``),
   so each is ONE journal record (redo.encode of its change set); then it ends with
   ``os._exit`` (no clean stop, no clean marker). ``checkpoint_bytes`` is raised from the
   default 128 MiB so that no background snapshot retires covered segments: the whole
   journal is kept, and a rebuild replays all of it. With the default, a snapshot every
   128 MiB of journal (~160,000 such records) bounds what a rebuild replays.
3. The trusted open (a broker crash: same boot id, the OS kept every page): a child opens
   the store, which must trust the LMDB file and replay nothing; it counts the tasks.
4. The rebuild (an OS crash): a different boot id is written into the data directory's
   ``boot_id`` file, so the next open does not trust the LMDB file: it copies the snapshot
   (seq 0) into place and replays every record. The journal's pages are first dropped from
   the page cache (fdatasync, then ``posix_fadvise(DONTNEED)`` on each file in the data
   directory: after a reboot nothing is cached; this VM's host may still cache the disk).
   A child opens the store and must report ``recovery["replayed"] == N``, hold seq N, and
   hold exactly the N tasks written (each with its claim record, ids in order, the last
   task's record byte for byte) and the events and audit records the journal kept.
   The same rebuild is then timed once more with the journal in the page cache.

Seconds are wall time around ``LmdbStore(...)`` in the child (process start-up excluded);
the store's own ``recovery["seconds"]`` is kept beside. MB = 10^6 bytes; journal bytes are
the records' (header + payload), not the preallocated segment files (also reported).
"""

from __future__ import annotations

import argparse
import os
import shutil
import pickle
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import orjson

DEFAULT_RECORDS = 1_000_000
QUICK_RECORDS = 20_000
#: raised from the store's default (128 MiB) so no checkpoint retires a segment: see above
CHECKPOINT_BYTES = 1 << 62
DURABILITY = "none"
#: a boot id no machine has: the next open takes the machine for rebooted
FOREIGN_BOOT = "00000000-0000-0000-0000-000000000000"
#: the captured claims (the first claim of an agent also registers it: it is not kept)
TEMPLATES = 4
#: journal record header (journal.py: length u32, crc32c u32, seq u64)
RECORD_HEAD = 16
_TASK_ID = "task-%08d"
#: where a step's value holds the task id (replaced per record)
_ID = b"\0ID\0"
ROOT = Path(__file__).resolve().parent.parent
#: the longest a child may take (a 1,000,000-record build takes ~40 s here, a rebuild ~14 s)
CHILD_TIMEOUT_S = 3600


# ---------------------------------------------------------------- the records
def capture(work: Path, count: int = TEMPLATES) -> list[list[tuple[str, bytes, bytes | None]]]:
    """``count`` real claims' change sets as (table, key in the table, value or None):
    the real core with the broker's default settings, on an LmdbStore of its own. The event
    log and the audit trail are kept tiny here so each claim shows the trims it makes in a
    full log (when they apply is decided with the real sizes, :func:`plan`)."""
    from zmesh import protocol
    from zmesh.config import BrokerConfig
    from zmesh.core import Core, Now, Settings
    from zmesh.store import LmdbStore

    defaults = BrokerConfig()
    core = Core(Settings(default_ttl=defaults.default_ttl, event_log_size=2, audit=defaults.audit,
                         audit_retention=2))
    store = LmdbStore(work / "capture", durability=DURABILITY)
    out = []
    try:
        def now() -> Now:
            return Now(time.monotonic(), time.time())

        with store.write() as txn:
            ctx = core.batch(txn, now())
            for i in range(count + 1):
                core.handle(ctx, "task_create", protocol.validate(protocol.OPS["task_create"], {"id": _TASK_ID % i}))
        for i in range(count + 1):
            with store.write() as txn:
                core.handle(core.batch(txn, now()), "claim", protocol.validate(
                    protocol.OPS["claim"], {"task": _TASK_ID % i, "agent": "agent-1", "ttl": 60}))
            if i:  # the first also registered the agent
                out.append([(*_split(key), value) for key, value in txn.changes.items()])
    finally:
        store.close()
    return out


def _split(key: bytes) -> tuple[str, bytes]:
    """A store key as (table, key in the table): the longest prefix (a nested table's is longer)."""
    from zmesh.core.schema import PREFIXES

    table = max((name for name, prefix in PREFIXES.items() if key.startswith(prefix)),
                key=lambda name: len(PREFIXES[name]))
    return table, key[len(PREFIXES[table]):]


def plan(templates: list[list[tuple[str, bytes, bytes | None]]]) -> list[list[tuple[str, str, Any]]]:
    """Each captured change set as steps (what, table, argument). ``what`` is task (a key
    that starts with the task id: the id is replaced in key and value), event / audit (a
    numbered key: renumbered per record, the id replaced in the value), event-trim /
    audit-trim (the delete of the record that fell out), counter (8 bytes, renumbered),
    or fixed (written as captured)."""
    from zmesh.core.schema import COUNTER

    out = []
    for number, changes in enumerate(templates, start=1):
        tid = (_TASK_ID % number).encode()

        def blank(value: bytes | None) -> bytes | None:
            return None if value is None else value.replace(tid, _ID)

        steps: list[tuple[str, str, Any]] = []
        for table, key, value in changes:
            if table == "tasks" and key.startswith(tid):
                steps.append(("task", table, (key[len(tid):], blank(value))))
            elif table == "events" and key.startswith(COUNTER):
                steps.append(("counter", table, key))
            elif table in ("events", "audit"):
                kind = "event" if table == "events" else "audit"
                steps.append((kind + "-trim", table, None) if value is None else (kind, table, blank(value)))
            elif tid in key or (value is not None and tid in value):  # a shape this generator does not know
                raise RuntimeError(f"a claim's change set names its task in {table} key {key!r}: "
                                   "bench/recovery.py cannot renumber it")
            else:
                steps.append(("fixed", table, (key, value)))
        out.append(steps)
    return out


def write_records(store: Any, steps_list: list[list[tuple[str, str, Any]]], n: int, event_log: int,
                  audit_keep: int) -> int:
    """Write ``n`` claim-shaped records (one write transaction each) on ``store``; returns
    the journal bytes they take (record headers included)."""
    from zmesh.core.schema import U64, audit_key, seq_key

    events = sum(1 for what, _t, _a in steps_list[0] if what == "event")
    total = 0
    for i in range(n):
        steps = steps_list[i % len(steps_list)]
        tid = (_TASK_ID % i).encode()
        event = i * events
        audit = i + 1
        with store.write() as txn:
            for what, table, arg in steps:
                if what == "task":
                    suffix, value = arg
                    if value is None:
                        txn.delete(table, tid + suffix)
                    else:
                        txn.put(table, tid + suffix, value.replace(_ID, tid))
                elif what == "event":
                    event += 1
                    txn.put(table, seq_key(event), arg.replace(_ID, tid))
                elif what == "event-trim":
                    if event > event_log:
                        txn.delete(table, seq_key(event - event_log))
                elif what == "audit":
                    txn.put(table, audit_key(audit), arg.replace(_ID, tid))
                elif what == "audit-trim":
                    if audit > audit_keep:
                        txn.delete(table, audit_key(audit - audit_keep))
                elif what == "counter":
                    name = arg[1:]
                    txn.put(table, arg, U64.pack(event if name == b"seq" else audit if name == b"audit" else i + 1))
                elif arg[1] is None:
                    txn.delete(table, arg[0])
                else:
                    txn.put(table, *arg)
        # redo.py's version-1 size: header 5, per change 3 + key (+ 4 + value for a put)
        total += RECORD_HEAD + 5 + sum(3 + len(k) + (0 if v is None else 4 + len(v)) for k, v in txn.changes.items())
    return total


def expected_task(steps_list: list[list[tuple[str, str, Any]]], i: int) -> bytes:
    """The task record record ``i`` wrote (checked after recovery, byte for byte)."""
    for what, _table, arg in steps_list[i % len(steps_list)]:
        if what == "task" and arg[0] == b"":
            return arg[1].replace(_ID, (_TASK_ID % i).encode())
    raise AssertionError("the captured claim wrote no task record")


# ---------------------------------------------------------------- the processes
def _child() -> None:
    """One process (``python -c``, see :func:`_run`): the job and its arguments pickled on
    stdin, its result pickled on stdout; it ends without a clean stop (``os._exit``)."""
    import logging

    logging.getLogger("zmesh").setLevel(logging.ERROR)  # the rebuild's warning is expected
    job, args = pickle.loads(sys.stdin.buffer.read())
    code = 0
    try:
        answer: dict[str, Any] = {"ok": (_build if job == "build" else _open)(**args)}
    except BaseException:
        answer, code = {"error": traceback.format_exc()}, 1
    sys.stdout.buffer.write(pickle.dumps(answer))
    sys.stdout.flush()
    os._exit(code)  # no close(): the store stops as a crashed broker does


def _store(path: str, boot_id: str | None = None) -> Any:
    from zmesh.store import LmdbStore

    return LmdbStore(path, durability=DURABILITY, checkpoint_bytes=CHECKPOINT_BYTES, boot_id=boot_id)


def _build(path: str, n: int, steps_list: list[Any], event_log: int, audit_keep: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    store = _store(path)
    first = store.journal.first_seq if store.journal else None
    journal_bytes = write_records(store, steps_list, n, event_log, audit_keep)
    assert store.journal is not None
    return {"seconds": round(time.perf_counter() - t0, 3), "journal_bytes": journal_bytes,
            "last_seq": store.journal.last_seq, "first_seq": first, "snapshot_seq": store.history.snapshot_seq}


def _open(path: str, n: int, expect: str, last_task: bytes, events_kept: int, audits: int,
          profile: bool = False) -> dict[str, Any]:
    """Open the store (timed), then check it holds every record: what a wrong recovery
    would not."""
    from zmesh.core.schema import is_counter

    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    store = _store(path)
    seconds = time.perf_counter() - t0
    if prof is not None:
        prof.disable()
    rec = dict(store.recovery)
    problems = []
    want = {"rebuild": (False, n), "trusted": (True, 0)}[expect]
    if (rec["trusted"], rec["replayed"]) != want:
        problems.append(f"expected trusted={want[0]} and {want[1]} record(s) replayed, got {rec}")
    if rec["seq"] != n or store.applied != n:
        problems.append(f"the store holds journal seq {rec['seq']}, not {n}")
    if rec["journal_end"] != "clean":
        problems.append(f"the journal did not end cleanly: {rec['journal_end']}")
    tasks = claims = 0
    with store.read() as txn:
        for key, value in txn.scan("tasks"):
            if key.endswith(b"\0"):
                claims += 1
                continue
            if key != (_TASK_ID % tasks).encode():
                problems.append(f"task {tasks} is {key!r}, not {_TASK_ID % tasks}")
                break
            tasks += 1
            if tasks == n and value != last_task:
                problems.append("the last task's record is not the one written")
        kept = sum(1 for key, _ in txn.scan("events") if not is_counter(key))
        audit = sum(1 for _ in txn.scan("audit"))
    if (tasks, claims) != (n, n):
        problems.append(f"{tasks:,} task(s) and {claims:,} claim record(s) after recovery, {n:,} of each written")
    if (kept, audit) != (events_kept, audits):
        problems.append(f"{kept:,} event(s) and {audit:,} audit record(s) after recovery, "
                        f"{events_kept:,} and {audits:,} expected")
    if problems:
        raise AssertionError("; ".join(problems))
    out = {"seconds": round(seconds, 3), "store_seconds": rec["seconds"], "replayed": rec["replayed"],
           "trusted": rec["trusted"], "why": rec["why"], "rebuilt": rec["rebuilt"], "tasks": tasks,
           "claims": claims, "events": kept, "audit": audit}
    if prof is not None:
        import io
        import pstats

        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(15)
        out["profile"] = text.getvalue()
    return out


def _run(job: str, **args: Any) -> dict[str, Any]:
    """``job`` in a fresh Python process; its result, or RuntimeError (the exception's last
    line first: a report's one-line reason, then the child's traceback)."""
    try:
        proc = subprocess.run([sys.executable, "-c", "from bench.recovery import _child; _child()"],
                              input=pickle.dumps((job, args)), capture_output=True, cwd=ROOT,
                              timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:  # run() has killed it
        raise RuntimeError(f"recovery {job}: no answer in {CHILD_TIMEOUT_S} s") from None
    try:
        answer = pickle.loads(proc.stdout)
    except Exception:
        answer = {"error": proc.stderr.decode(errors="replace") or "the process ended without an answer"}
    if "error" in answer:
        text = answer["error"].strip()
        raise RuntimeError(f"recovery {job} failed (exit code {proc.returncode}): {text.splitlines()[-1]}\n{text}")
    return answer["ok"]


def drop_cache(path: str) -> None:
    """Every file under ``path`` written out and dropped from the page cache (as after a reboot)."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def measure(n: int = DEFAULT_RECORDS, work: Path | None = None, *, profile: bool = False,
            warm: bool = True) -> dict[str, Any]:
    """The whole measurement (see the module's docstring); returns the report's dict.
    Raises RuntimeError when a recovery is not what it must be."""
    from zmesh.config import BrokerConfig
    from zmesh.store.checkpoints import BOOT_FILE

    if n < 1:
        raise ValueError("the journal needs at least one record")
    defaults = BrokerConfig()
    event_log, audit_keep = defaults.event_log_size, defaults.audit_retention
    with tempfile.TemporaryDirectory(prefix="zmesh-recovery-", dir=work) as tmp:
        templates = capture(Path(tmp))
        steps_list = plan(templates)
        events = sum(1 for what, _t, _a in steps_list[0] if what == "event")
        path = os.path.join(tmp, "data")
        build = _run("build", path=path, n=n, steps_list=steps_list, event_log=event_log, audit_keep=audit_keep)
        if (build["last_seq"], build["first_seq"], build["snapshot_seq"]) != (n, 1, 0):
            raise RuntimeError(f"recovery build: expected journal seqs 1..{n} after a snapshot at 0, got {build}")
        journal_dir = os.path.join(path, "journal")
        segments = [os.path.join(journal_dir, e) for e in os.listdir(journal_dir) if e.endswith(".wal")]
        segment_bytes = sum(os.path.getsize(s) for s in segments)
        check = {"n": n, "last_task": expected_task(steps_list, n - 1), "events_kept": min(n * events, event_log),
                 "audits": min(n, audit_keep)}
        trusted = _run("open", path=path, expect="trusted", **check)

        # a rebuild that replayed takes a snapshot and retires the journal it covers: each
        # further rebuild starts from a copy of the directory as the crash left it
        pristine = path + ".pristine" if warm or profile else None
        if pristine:
            shutil.copytree(path, pristine)
        runs = [0]

        def rebuild(cold: bool, prof: bool = False) -> dict[str, Any]:
            if runs[0] and pristine:
                shutil.rmtree(path)
                shutil.copytree(pristine, path)
            runs[0] += 1
            with open(os.path.join(path, BOOT_FILE), "w") as f:  # as if the machine restarted
                f.write(FOREIGN_BOOT + "\n")
            if cold:
                drop_cache(path)
            return _run("open", path=path, expect="rebuild", profile=prof, **check)

        cold = rebuild(cold=True)
        hot = rebuild(cold=False) if warm else None
        profiled = rebuild(cold=False, prof=True) if profile else None
    jb = build["journal_bytes"]
    out: dict[str, Any] = {
        "records": n, "journal_bytes": jb, "bytes_per_record": round(jb / n, 1),
        "segments": len(segments), "segment_bytes": segment_bytes,
        "durability": DURABILITY, "checkpoint_bytes": CHECKPOINT_BYTES, "build_seconds": build["seconds"],
        "record": ("the task and its claim record, a task.claimed event, an audit record, 5 counters"
                   + (f"; from record {event_log + 1:,} on also the delete of the event that fell out of the log"
                      if n * events > event_log else "")),
        "rebuild": _rates(cold, jb), "rebuild_warm": _rates(hot, jb) if hot else None,
        "trusted": trusted,
    }
    if profiled is not None:
        out["profile"] = profiled["profile"]
    return out


def _rates(r: dict[str, Any], journal_bytes: int) -> dict[str, Any]:
    secs = r["seconds"]
    return dict(r, records_per_s=round(r["replayed"] / secs), mb_per_s=round(journal_bytes / secs / 1e6, 1))


def summary(r: dict[str, Any]) -> str:
    rb, tr, warm = r["rebuild"], r["trusted"], r.get("rebuild_warm")
    return (f"journal recovery: {r['records']:,} records ({r['bytes_per_record']:,.0f} B each, "
            f"{r['journal_bytes'] / 1e6:,.1f} MB): rebuild from the snapshot + replay {rb['seconds']:.2f} s "
            f"({rb['records_per_s']:,} records/s, {rb['mb_per_s']:,} MB/s; page cache dropped)"
            + (f", {warm['seconds']:.2f} s with the journal cached" if warm else "")
            + f"; trusted open {tr['seconds']:.2f} s ({tr['replayed']} replayed)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__.split("\n\n")[0])
    ap.add_argument("records", nargs="?", type=int, default=DEFAULT_RECORDS, help="journal records (default 1,000,000)")
    ap.add_argument("--out", default=None, help="directory for recovery.json")
    ap.add_argument("--profile", action="store_true", help="one more rebuild under cProfile: its top entries")
    args = ap.parse_args(argv)
    r = measure(args.records, profile=args.profile)
    print(summary(r))
    if args.profile:
        print(r["profile"])
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "recovery.json").write_bytes(orjson.dumps(r, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
