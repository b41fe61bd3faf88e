"""A stdio relay that loses answers on purpose: ``python tests/lossy_stdio.py --drop TOOL
[--times N] -- COMMAND...`` runs COMMAND (an MCP server over stdio) and relays its stdin and
stdout line by line, except that the answer to the first N ``tools/call`` requests of TOOL
never reaches the client: what a broken response stream of the stateless MCP revision does
to an in-flight call. Everything else passes unchanged, in order.

Each dropped answer is logged on stderr (``dropped: {...}``). When stdin closes, the server's
stdin is closed and the relay waits for the server to exit (it is killed after 20 s); the
relay exits with the server's code. ``--pid-file`` names where the server's PID goes, so a
test can stop it by PID whatever happens to the relay.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from typing import IO


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--drop", required=True, help="the tool whose answers are lost")
    parser.add_argument("--times", type=int, default=1, help="how many answers are lost")
    parser.add_argument("--pid-file", help="where the server's PID is written (the test stops it by PID)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert server.stdin is not None and server.stdout is not None
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write(str(server.pid))
    doomed: set[object] = set()
    left = [args.times]
    lock = threading.Lock()

    def upstream(src: IO[bytes], dst: IO[bytes]) -> None:
        for line in src:
            try:
                msg = json.loads(line)
            except ValueError:
                msg = None
            if isinstance(msg, dict) and msg.get("method") == "tools/call" and \
                    (msg.get("params") or {}).get("name") == args.drop:
                with lock:
                    if left[0] > 0:
                        left[0] -= 1
                        doomed.add(msg.get("id"))
            dst.write(line)
            dst.flush()
        dst.close()

    def downstream(src: IO[bytes], dst: IO[bytes]) -> None:
        for line in src:
            try:
                msg = json.loads(line)
            except ValueError:
                msg = None
            if isinstance(msg, dict) and "method" not in msg and ("result" in msg or "error" in msg):
                with lock:
                    lost = msg.get("id") in doomed
                    doomed.discard(msg.get("id"))
                if lost:
                    sys.stderr.write(f"dropped: {line.decode(errors='replace').strip()}\n")
                    sys.stderr.flush()
                    continue
            dst.write(line)
            dst.flush()

    up = threading.Thread(target=upstream, args=(sys.stdin.buffer, server.stdin), daemon=True)
    down = threading.Thread(target=downstream, args=(server.stdout, sys.stdout.buffer), daemon=True)
    up.start()
    down.start()
    up.join()
    try:
        code = server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()
        code = server.wait()
    down.join(5)
    return code


if __name__ == "__main__":
    sys.exit(main())
