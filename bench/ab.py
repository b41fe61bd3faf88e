"""Two commits' brokers side by side: ``python -m bench.ab TREE_A TREE_B [--rounds N] [--pairs thr,bc]``.

Each TREE is a checkout of a commit (``git worktree add /tmp/a REV``). Both brokers run at
once, each from its own tree (its own ``zmesh`` package: the process starts in that tree
with it on PYTHONPATH); the clients are this tree's. Rounds alternate A B / B A, as
bench/paired.py does, so a change in machine load lands on both sides; the median ratio
A / B is printed per workload: ``thr`` (16-client durable claims/s, higher is better),
``bc`` (broadcast p95 to 10 subscribers, durability none, lower is better) and ``cf``
(1-client claim p95 at durability fast, lower is better), ``cl`` (the same at full). What
bench/ANALYSIS.md quotes as "paired against" a commit was measured with this.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from . import paired
from .systems import Server, System, ZmeshSystem, free_port, ping


class TreeZmesh(ZmeshSystem):
    """A zmesh broker run from another checkout."""

    tree: str = ""

    def start(self, workdir: Path) -> dict[str, Any]:
        port, pub = free_port(), free_port()
        data = workdir / f"zmesh-{self.level}"
        ep = f"tcp://127.0.0.1:{port}"
        cmd = ["env", f"--chdir={self.tree}", f"PYTHONPATH={self.tree}", sys.executable, "-m", "zmesh", "broker",
               "--data", str(data), "--bind", ep, "--pub-bind", f"tcp://127.0.0.1:{pub}", "--no-discovery",
               "--durability", self.level, "--ttl", "60"]
        self.servers.append(Server(cmd, workdir / f"zmesh-{self.level}.log").start(lambda: ping(ep, 0.2) is not None))
        return {"kind": "zmesh", "endpoint": ep, "pub": f"tcp://127.0.0.1:{pub}", "data": str(data)}


def _tree(tree: str, level: str) -> Callable[[], System]:
    def make() -> System:
        system = TreeZmesh(f"zmesh@{tree}({level})", level, level=level)
        system.tree = tree
        return system
    return make


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--pairs", default="thr,bc")
    args = parser.parse_args()
    a, b = (str(Path(t).resolve()) for t in (args.a, args.b))
    every = [paired.Pair("thr", "16-client durable claims/s A / B", _tree(a, "full"), _tree(b, "full"),
                         "throughput16", 1.0, False),
             paired.Pair("bc", "broadcast p95 A / B", _tree(a, "none"), _tree(b, "none"), "broadcast", 1.0, True),
             paired.Pair("cf", "claim p95 at durability fast A / B", _tree(a, "fast"), _tree(b, "fast"), "latency",
                         1.0, True),
             paired.Pair("cl", "claim p95 at durability full A / B", _tree(a, "full"), _tree(b, "full"), "latency",
                         1.0, True)]
    chosen = [p for p in every if p.key in args.pairs.split(",")]
    return paired.run_alone(chosen, args.rounds, goals=False)

if __name__ == "__main__":
    sys.exit(main())
