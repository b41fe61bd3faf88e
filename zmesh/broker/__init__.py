"""The broker: the one process that owns the store and reads the clock for the core.

Modules, in the way of a request (each docstring opens with the rules it keeps):

* loop.py: the loop (ROUTER + PUB, poller, timers, group commit, drain on stop); thin.
* sockets.py: binding the ROUTER and PUB sockets, queue limits, ipc file modes.
* zap.py: the gate when secure (CURVE server sockets, ZAP admitting allowed keys).
* lanes.py: the priority policy (which requests of a pass go now, when low work goes); pure.
* apply.py: one batch in one transaction (the retry cache, ``internal`` for a crash).
* retries.py: the retry cache (a retried request gets its original reply).
* log.py: the log lines of expiries and refusals.
* jobs.py: backups in a thread, answered from the loop.
* metrics.py, metrics_http.py: what the loop counts, and GET /metrics and /health.
* sd_notify.py: systemd readiness.

The store is injected (``Broker(config, store=...)``); the LMDB store is the default.
"""

from __future__ import annotations

from .loop import Broker, tune_gc

__all__ = ["Broker", "tune_gc"]
