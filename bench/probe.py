"""The physical limit: a raw pyzmq ROUTER server, optionally with one LMDB write per request.

Run as its own process (``python -m bench.probe --mode M --bind EP --data DIR``), so the
round trip crosses a process boundary exactly as a client -> zmesh broker request does.

Modes:
``echo``   reply at once: the transport alone
``lmdb``   per request: one write txn (get the key; put it if absent), commit, reply;
           ``--durability`` full (sync + metasync), fast (metasync off) or none (no sync)
``group``  drain every waiting request, one write txn for all of them, one commit, replies:
           the best a group-committing broker can do
"""

from __future__ import annotations

import argparse
import signal
import sys

import lmdb
import zmq


def serve(mode: str, bind: str, data: str | None, durability: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.bind(bind)
    env = None
    if mode != "echo":
        env = lmdb.open(data, map_size=1 << 32, sync=durability != "none",
                        metasync=durability == "full", readahead=False)
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while running:
        if not poller.poll(200):
            continue
        if mode == "echo":
            while True:
                try:
                    sock.send_multipart(sock.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
            continue
        batch = []
        while True:
            try:
                batch.append(sock.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
            if mode == "lmdb":
                break
        replies = []
        with env.begin(write=True) as txn:  # type: ignore[union-attr]
            for frames in batch:
                key = frames[-1]
                won = txn.get(key) is None
                if won:
                    txn.put(key, b"claimed")
                replies.append(frames[:-1] + [b"1" if won else b"0"])
        for frames in replies:
            sock.send_multipart(frames)
    sock.close(0)
    ctx.term()
    if env is not None:
        env.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.probe")
    p.add_argument("--mode", choices=["echo", "lmdb", "group"], required=True)
    p.add_argument("--bind", required=True)
    p.add_argument("--data")
    p.add_argument("--durability", choices=["full", "fast", "none"], default="full")
    a = p.parse_args(argv)
    serve(a.mode, a.bind, a.data, a.durability)


if __name__ == "__main__":
    main(sys.argv[1:])
