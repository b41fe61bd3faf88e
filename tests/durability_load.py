"""The child process of tests/test_durability_kill.py: one agent that, in a loop, creates a
task and claims it, sends a message to its own inbox address and reserves a path, and
writes one line to its log for every write the broker ACKNOWLEDGED, after the reply came
back (flushed line by line, so what the parent reads is only what was answered):

    create TASK
    claim TASK AGENT TOKEN
    send ID SEQ I          (the message's id, the seq the reply carried, the loop index)
    reserve PATTERN AGENT TOKEN

It connects, prints ``ready`` and waits for a line on stdin (the start barrier), then runs
until the broker is gone (the test SIGKILLs it): an Unreachable while the broker's PID is
gone ends the loop and the process prints ``cut N U`` (N: iterations completed, U: requests
that went unanswered while the broker still ran, on a busy machine: not logged, the loop goes
on) and exits 0. ``done N U`` says the loop ran out before the broker went away. Any other
error is a failure (a traceback, exit 1).

Run as: python -c "from tests.durability_load import main; main()" ENDPOINT BROKER_PID AGENT LOG MAX
"""

from __future__ import annotations

import os
import sys

from zmesh import Client, Unreachable


def inbox(agent: str) -> str:
    """The address an agent's messages go to (never registered: stored, pushed to no one)."""
    return f"inbox-{agent}"


def task_id(agent: str, i: int) -> str:
    return f"{agent}-t{i}"


def pattern(agent: str, i: int) -> str:
    return f"{agent}/f{i}.txt"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    endpoint, broker_pid, agent, log_path, most = (sys.argv[1:] if argv is None else argv)
    # a short timeout (retries with the same request id inside it): a dead broker is an
    # Unreachable within 2 s; no heartbeat thread, the lease TTL outlives the test
    client = Client(endpoint, agent=agent, ttl=300, timeout=2.0, heartbeat=False).connect()
    print("ready", flush=True)
    sys.stdin.readline()
    done, unanswered, cut = 0, 0, False
    with open(log_path, "a", encoding="utf-8") as log:
        def ack(line: str) -> None:
            log.write(line + "\n")
            log.flush()

        for i in range(int(most)):
            task = task_id(agent, i)
            try:
                client.create_task(task)
                ack(f"create {task}")
                claim = client.claim(task)
                if claim is None:  # another agent holds it: never, the task is this agent's own
                    raise AssertionError(f"claim of {task} lost to another agent")
                ack(f"claim {task} {claim.agent} {claim.token}")
                sent = client.send("load", {"agent": agent, "i": i}, to=inbox(agent))
                ack(f"send {sent['id']} {sent['seq']} {i}")
                got = client.reserve([pattern(agent, i)])
                for grant in got["reservations"]:
                    ack(f"reserve {grant['pattern']} {got['agent']} {grant['token']}")
            except Unreachable:
                if _alive(int(broker_pid)):  # no answer in time, the broker still runs: not acked
                    unanswered += 1
                    continue
                cut = True
                break
            done += 1
    client.close(unregister=False)  # the broker is gone: nothing to unregister from
    print(f"{'cut' if cut else 'done'} {done} {unanswered}", flush=True)


if __name__ == "__main__":
    main()
