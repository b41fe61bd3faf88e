"""A holder for the recipe tests, in its own process so a test can SIGKILL it.

    python tests/recipe_holder.py ENDPOINT KIND NAME AGENT TTL [N]

KIND is ``lock``, ``semaphore`` (N slots), ``election`` or ``barrier`` (N parties). The
holder connects as AGENT with a lease of TTL seconds (its client heartbeats every TTL/3),
takes the lock, a slot, the leadership or a place at the barrier (where it then waits),
prints ``acquired <token>`` and then sleeps until it is killed.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from zmesh import Client
from zmesh.recipes import Barrier, Election, Lock, Semaphore


def main(argv: list[str]) -> int:
    endpoint, kind, name, agent, ttl = argv[:5]
    client = Client(endpoint, agent=agent, ttl=float(ttl))
    client.connect()
    held: Any
    if kind == "lock":
        held = Lock(client, name)
        ok = held.acquire(timeout=30)
    elif kind == "semaphore":
        held = Semaphore(client, name, int(argv[5]))
        ok = held.acquire(timeout=30)
    elif kind == "election":
        held = Election(client, name)
        ok = held.campaign(timeout=30)
    elif kind == "barrier":
        held = Barrier(client, name, int(argv[5]))
        threading.Thread(target=held.enter, daemon=True).start()  # it waits there for the others
        deadline = time.monotonic() + 30
        while held.token is None and time.monotonic() < deadline:  # until its place is taken
            time.sleep(0.01)
        ok = held.token is not None
    else:
        print(f"unknown kind {kind!r}", file=sys.stderr)
        return 2
    if not ok:
        print("not acquired", flush=True)
        return 1
    print(f"acquired {held.token}", flush=True)
    threading.Event().wait()  # until SIGKILL
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
