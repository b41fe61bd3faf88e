"""Broker settings: one table, every value checked for type and range before the broker starts.

Rules this module keeps:

* :data:`SETTINGS` is the single source of truth for every key: name, type, default, range or
  choices, one-line doc and env var (``ZMESH_`` + NAME). ``BrokerConfig``'s fields,
  ``conf/zmesh.toml`` and :func:`known_env` follow it (tests/test_config.py checks they agree).
* Precedence: defaults < config file (``--config`` or ``ZMESH_CONFIG``) < ``ZMESH_*`` env <
  flags. ``BrokerConfig.sources`` records where each effective value came from.
* Nothing is ignored or guessed: an unknown section or key, a value of the wrong TOML type
  (no bool for an int, no string for a list), an env string that does not parse exactly, an
  empty env value, a number that is out of range or not finite is refused.
* Flags go through the same checks as the file (the Python API may pass anything).
* Every refusal is a :class:`~zmesh.errors.ConfigError` of one line naming the key, where it
  came from and the rule; ``details = {"field": key, "source": source}``.

The file is read only when named, so a broker runs with no file at all.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .transport.endpoint import MAX_IPC_PATH_BYTES, check_endpoint
from .errors import ConfigError, InvalidArgument
from .protocol import MAX_TTL_S, MIN_TTL_S, escape_controls, number_text
from .discovery.mesh import DEFAULT_MESH, RULE as MESH_RULE, check_mesh
from .protocol.fields import (AUDIT_MODES, DEFAULT_ACK_WAIT_S, DEFAULT_AUDIT, DEFAULT_AUDIT_RETENTION, DEFAULT_LOW_BATCH_S,
                     DEFAULT_MESSAGE_MAX_AGE_S, DEFAULT_MESSAGE_RETENTION, MAX_AUDIT_RETENTION)
from .store import DURABILITY

__all__ = ["BrokerConfig", "ConfigError", "Setting", "SETTINGS", "known_env", "unknown_env",
           "default_data_dir", "default_broker", "DEFAULT_PORT", "DEFAULT_PUB_PORT",
           "DEFAULT_TTL_S", "DEFAULT_TIMEOUT_S", "DEFAULT_EVENT_LOG", "DEFAULT_DURABILITY"]

DEFAULT_PORT = 7700
DEFAULT_PUB_PORT = 7701
DEFAULT_TTL_S = 30.0
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_EVENT_LOG = 100_000
DEFAULT_DURABILITY = "full"
DEFAULT_DRAIN_S = 5.0
#: the active broker's leader key lease with an etcd store (measured: a standby led 1.7-2.1 s after a kill at 2 s)
DEFAULT_LEADER_TTL_S = 5
#: what `log_format` may be (the CLI's handler formats records so: zmesh/util/logs.py)
LOG_FORMATS = ("text", "json")
#: ZMESH_* names read besides the settings': the file to load, the clients' broker, the
#: committing agent and the mode of `zmesh guard` (ZMESH_AGENT, ZMESH_GUARD),
#: ZMESH_INTERFACES (a setting, also read by discovery in clients), the clients' keys and
#: their known-hosts file (ZMESH_KNOWN_HOSTS; ZMESH_MESH is a setting clients read too)
OTHER_ENV = ("ZMESH_CONFIG", "ZMESH_BROKER", "ZMESH_INTERFACES", "ZMESH_AGENT", "ZMESH_GUARD",
             "ZMESH_SERVER_KEY", "ZMESH_KEY", "ZMESH_KNOWN_HOSTS")
_SECTION = "broker"
_BOOLS = dict(zip(("1", "0", "true", "false", "yes", "no", "on", "off"), (True, False) * 4))


def default_data_dir() -> str:
    """$XDG_DATA_HOME/zmesh, else ~/.local/share/zmesh (ZMESH_DATA or --data override it)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return os.path.join(base, "zmesh")


def default_broker() -> str:
    return f"tcp://127.0.0.1:{DEFAULT_PORT}"


def _endpoint(value: str, name: str) -> None:
    check_endpoint(value, field=name, bind=True)


def _interface(value: str, name: str) -> None:
    if not value or any(c.isspace() or not c.isprintable() for c in value):
        raise InvalidArgument(f"invalid {name} item {value!r}: must be an address or interface "
                              "name without whitespace or control characters")


def _listen(value: str, name: str) -> None:
    from .broker.metrics_http import parse_address  # imported when a value is given: the check lives with the endpoint

    parse_address(value)


def _store_url(value: str, name: str) -> None:
    from .store.etcd_kv import parse_endpoints  # plain parsing: grpc is imported only when one opens

    if not value.startswith("etcd://"):
        raise InvalidArgument("is not a store: give etcd://HOST:PORT[,HOST:PORT...] (empty: this broker's own LMDB)")
    try:
        parse_endpoints(value)
    except ValueError as exc:
        raise InvalidArgument(f"is not a store: {exc}") from None


def _mesh(value: str, name: str) -> None:
    try:
        check_mesh(value, name)
    except InvalidArgument:
        raise InvalidArgument(f"is not a mesh name: must be {MESH_RULE}") from None


@dataclass(frozen=True)
class Setting:
    """One key: ``lo``/``hi`` bound a number's value, or a string's or list's length."""

    name: str
    kind: type  # bool, int, float, str or list (of str)
    default: Any  # a value, or a zero-argument callable when it depends on the machine
    doc: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    unit: str = ""  # what the value counts, for messages ("seconds", "endpoints")
    item: Callable[[str, str], None] | None = None  # checks a str value or one list item, raises InvalidArgument
    example: str = ""  # a good file value, for the message of a wrong type

    @property
    def env(self) -> str:
        return "ZMESH_" + self.name.upper()

    def default_value(self) -> Any:
        value = self.default() if callable(self.default) else self.default
        return list(value) if isinstance(value, tuple) else value

    def rule(self) -> str:
        if self.kind is bool:
            return "must be true or false"
        if self.kind in (int, float):
            what = "a whole number" if self.kind is int else "a number"
            return f"must be {what} of {self.unit} in {number_text(self.lo)}..{number_text(self.hi)}"
        if self.choices:
            return f"must be one of {', '.join(self.choices)}"
        if self.kind is str:
            return f"must be a non-empty {self.unit or 'string'} without control characters"
        count = f"at most {number_text(self.hi)}" if not self.lo else f"{number_text(self.lo)}..{number_text(self.hi)}"
        return f"must be a list of {count} {self.unit}, e.g. {self.name} = {self.example}"


SETTINGS: tuple[Setting, ...] = (
    Setting("data", str, default_data_dir, "data directory (LMDB files, broker.lock, ipc sockets)",
            lo=1, hi=4096, unit="path"),
    Setting("bind", list, (f"tcp://*:{DEFAULT_PORT}",), "ROUTER endpoints clients dial",
            lo=1, hi=16, unit="endpoints", item=_endpoint, example=f'["tcp://*:{DEFAULT_PORT}"]'),
    Setting("pub_bind", list, (f"tcp://*:{DEFAULT_PUB_PORT}",), "PUB endpoints events are published on",
            lo=1, hi=16, unit="endpoints", item=_endpoint, example=f'["tcp://*:{DEFAULT_PUB_PORT}"]'),
    Setting("ipc", bool, True, "also bind ipc:// endpoints in the data directory, for clients on this host"),
    Setting("durability", str, DEFAULT_DURABILITY, "full: journal flushed before each reply; fast: flushed right after; none: not flushed",
            choices=DURABILITY),
    Setting("default_ttl", float, DEFAULT_TTL_S, "lease TTL for agents that do not ask for one",
            lo=MIN_TTL_S, hi=MAX_TTL_S, unit="seconds"),
    Setting("event_log_size", int, DEFAULT_EVENT_LOG, "events kept for replay (older ones are trimmed)",
            lo=1, hi=100_000_000, unit="events"),
    Setting("ack_wait", float, DEFAULT_ACK_WAIT_S, "seconds a requires_ack delivery waits for its ack "
            "before it is delivered again (when the message names none)", lo=MIN_TTL_S, hi=MAX_TTL_S, unit="seconds"),
    Setting("message_retention", int, DEFAULT_MESSAGE_RETENTION, "messages kept per address (an agent's "
            "inbox, a group, a capability, everyone); unacked requires_ack ones are never trimmed",
            lo=1, hi=100_000_000, unit="messages"),
    Setting("message_max_age", float, DEFAULT_MESSAGE_MAX_AGE_S, "seconds a settled message is kept",
            lo=1.0, hi=10 * 365 * 86400.0, unit="seconds"),
    Setting("low_batch", float, DEFAULT_LOW_BATCH_S, "seconds low-priority work may wait while more urgent "
            "work keeps the broker busy (it goes at once when the broker is idle)", lo=0.0, hi=10.0, unit="seconds"),
    Setting("audit", str, DEFAULT_AUDIT, "what the audit trail records: writes (every op that changes durable "
            "state, and every refused request), all (every op, reads and heartbeats too), off", choices=AUDIT_MODES),
    Setting("audit_retention", int, DEFAULT_AUDIT_RETENTION, "audit records kept (the oldest goes when one more "
            "comes)", lo=1, hi=MAX_AUDIT_RETENTION, unit="records"),
    Setting("discovery", bool, True, "advertise the broker on the LAN with zeroconf"),
    Setting("interfaces", list, (), "addresses or interface names to advertise on (empty: default route's)",
            lo=0, hi=64, unit="addresses or interface names", item=_interface,
            example='["192.168.1.10"]'),
    Setting("mesh", str, DEFAULT_MESH, "the mesh this broker serves, in its discovery record: clients join the "
            "brokers of their mesh (ZMESH_MESH or --mesh too)", lo=1, hi=63, unit="mesh name", item=_mesh),
    Setting("store", str, lambda: "", "where the mesh's state is replicated: etcd://HOST:PORT[,HOST:PORT...] (an "
            "etcd cluster; the broker's LMDB is then one replica, and a write is acknowledged when etcd has it; "
            "docs/CLUSTER.md), or empty: this broker's own LMDB alone", lo=1, hi=4096, unit="store URL",
            item=_store_url),
    Setting("leader_ttl", int, DEFAULT_LEADER_TTL_S, "with an etcd store: seconds the active broker's leader key "
            "outlives it (etcd's minimum lease is 2 s)", lo=2, hi=60, unit="seconds"),
    Setting("map_size", int, 1 << 33, "LMDB map size: the most the data may grow to",
            lo=1 << 20, hi=1 << 40, unit="bytes"),
    Setting("secure", bool, False, "CurveZMQ on every endpoint: only clients whose public key is in "
            "authorized_keys get in"),
    Setting("key_file", str, lambda: "", "the broker's key pair, a .key_secret file of mode 0600 (empty: "
            "DATA/keys/broker.key_secret, made on the first secure start)", lo=1, hi=4096, unit="path"),
    Setting("authorized_keys", str, lambda: "", "directory of the client public keys allowed in, *.key files read "
            "again when it changes (empty: DATA/keys/authorized)", lo=1, hi=4096, unit="path"),
    Setting("log_format", str, "text", "text: one line per record for a person; json: one JSON object per line "
            "(ts, level, logger, msg, event and the event's fields) for a log pipeline", choices=LOG_FORMATS),
    Setting("drain_timeout", float, DEFAULT_DRAIN_S, "on SIGTERM, seconds the broker keeps answering the "
            "requests it already has before it exits (new connections are refused at once)",
            lo=0.0, hi=300.0, unit="seconds"),
    Setting("metrics", str, lambda: "", "HOST:PORT of the HTTP endpoint serving /metrics (Prometheus) and /health "
            "(empty: off; port 0: any free port)", lo=1, hi=300, unit="HOST:PORT address", item=_listen),
    Setting("metrics_token", str, lambda: "", "file (mode 0600) holding the bearer token GET /metrics requires "
            "('Authorization: Bearer TOKEN'; Prometheus: authorization.credentials_file); /health stays open "
            "(empty: no token)", lo=1, hi=4096, unit="path"),
)
_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def _default(name: str) -> Any:
    return field(default_factory=lambda: _BY_NAME[name].default_value())


@dataclass
class BrokerConfig:
    """The effective broker settings (see :data:`SETTINGS` for each key's rule)."""

    data: str = _default("data")
    bind: list[str] = _default("bind")
    pub_bind: list[str] = _default("pub_bind")
    ipc: bool = _default("ipc")
    durability: str = _default("durability")
    default_ttl: float = _default("default_ttl")
    event_log_size: int = _default("event_log_size")
    ack_wait: float = _default("ack_wait")
    message_retention: int = _default("message_retention")
    message_max_age: float = _default("message_max_age")
    low_batch: float = _default("low_batch")
    audit: str = _default("audit")
    audit_retention: int = _default("audit_retention")
    discovery: bool = _default("discovery")
    interfaces: list[str] = _default("interfaces")
    mesh: str = _default("mesh")
    store: str = _default("store")
    leader_ttl: int = _default("leader_ttl")
    map_size: int = _default("map_size")
    secure: bool = _default("secure")
    key_file: str = _default("key_file")
    authorized_keys: str = _default("authorized_keys")
    log_format: str = _default("log_format")
    drain_timeout: float = _default("drain_timeout")
    metrics: str = _default("metrics")
    metrics_token: str = _default("metrics_token")
    #: key -> where its value came from: "default", "file PATH", "env ZMESH_X" or "flag"
    sources: dict[str, str] = field(default_factory=lambda: dict.fromkeys(_BY_NAME, "default"),
                                    compare=False, repr=False)

    @property
    def key_path(self) -> Path:
        """The broker's key pair file: ``key_file``, else DATA/keys/broker.key_secret."""
        return Path(self.key_file or Path(self.data) / "keys" / "broker.key_secret")

    @property
    def authorized_path(self) -> Path:
        """The allow-list directory: ``authorized_keys``, else DATA/keys/authorized."""
        return Path(self.authorized_keys or Path(self.data) / "keys" / "authorized")

    @classmethod
    def load(cls, path: str | None = None, env: Mapping[str, str] | None = None,
             **flags: Any) -> "BrokerConfig":
        """Defaults < file (``path`` or ZMESH_CONFIG) < ZMESH_* env < ``flags`` (None, () and
        [] mean "not given"), every value checked; raises ConfigError naming the first bad one."""
        env = os.environ if env is None else env
        values = {s.name: s.default_value() for s in SETTINGS}
        sources = dict.fromkeys(values, "default")
        shown = {s.name: f"default {s.name} = {_toml(values[s.name])}" for s in SETTINGS}

        def put(s: Setting, value: Any, where: str, source: str) -> None:
            values[s.name], shown[s.name], sources[s.name] = _check(s, value, where, source), where, source

        origin = "flag"
        if not path and "ZMESH_CONFIG" in env:
            path, origin = env["ZMESH_CONFIG"], "env ZMESH_CONFIG"
            if not path.strip():
                raise _fail(f"ZMESH_CONFIG={path!r}: is empty; unset it or name a TOML file", "config", origin)
        if path:
            source = f"file {path}"
            for key, value in _read(path, origin).items():
                if key not in _BY_NAME:
                    raise _fail(f"config {path}: unknown key [{_SECTION}] {key}{_hint(key)}", key, source)
                put(_BY_NAME[key], value, f"config {path}: [{_SECTION}] {key} = {_toml(value)}", source)
        for s in SETTINGS:
            if s.env in env:
                where = f"{s.env}={_short(repr(env[s.env]))}"
                put(s, _parse_env(s, env[s.env], where), where, f"env {s.env}")
        for key, value in flags.items():
            if key not in _BY_NAME:
                raise _fail(f"unknown flag {key}{_hint(key)}", key, "flag")
            if value is not None and not (isinstance(value, (list, tuple)) and not value):
                put(_BY_NAME[key], value, f"flag {key}={_short(repr(value))}", "flag")
        _check_data(values, shown["data"], sources["data"])
        if values["metrics_token"] and not values["metrics"]:
            raise _fail(f"{shown['metrics_token']}: a token for a metrics endpoint that is off; set metrics = "
                        "HOST:PORT too, or leave metrics_token empty", "metrics_token", sources["metrics_token"])
        return cls(**values, sources=sources)


def known_env() -> frozenset[str]:
    """Every ZMESH_* variable zmesh reads."""
    return frozenset(s.env for s in SETTINGS) | frozenset(OTHER_ENV)


def env_meant(name: str) -> str | None:
    """The ZMESH_* variable zmesh reads that ``name`` is closest to (a typo of it), if any."""
    close = difflib.get_close_matches(name, sorted(known_env()), n=1)
    return close[0] if close else None


def unknown_env(env: Mapping[str, str] | None = None) -> list[str]:
    """ZMESH_* names set in ``env`` (default os.environ) that zmesh does not read, sorted."""
    env = os.environ if env is None else env
    known = known_env()
    return sorted(k for k in env if k.startswith("ZMESH_") and k not in known)


def _read(path: str, origin: str) -> dict[str, Any]:
    """The [broker] table of the file at ``path``; anything else in it is refused."""
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise _fail(f"config {path}: cannot read: {exc.strerror or exc}", "config", origin) from None
    except ValueError as exc:  # TOMLDecodeError, UnicodeDecodeError
        raise _fail(f"config {path}: not valid TOML: {exc}", "config", origin) from None
    for key, value in doc.items():
        if key != _SECTION and isinstance(value, dict):
            raise _fail(f"unknown section [{key}] in {path} (known: [{_SECTION}])", key, f"file {path}")
        if key != _SECTION:
            raise _fail(f"config {path}: unknown top-level key {key} (settings go in a [{_SECTION}] "
                        "section)", key, f"file {path}")
    table = doc.get(_SECTION, {})
    if not isinstance(table, dict):
        raise _fail(f"config {path}: {_SECTION} = {_toml(table)}: must be the [{_SECTION}] section",
                    _SECTION, f"file {path}")
    return table


def _parse_env(s: Setting, raw: str, where: str) -> Any:
    """The typed value of a ZMESH_* string (checked for range later, as any value)."""
    text = raw.strip()
    source = f"env {s.env}"
    if not text:
        raise _fail(f"{where}: is empty (unset it for the default); {s.rule()}", s.name, source)
    if s.kind is bool:
        if text.lower() not in _BOOLS:
            raise _fail(f"{where}: must be one of {', '.join(_BOOLS)}", s.name, source)
        return _BOOLS[text.lower()]
    if s.kind is list:
        return [part.strip() for part in text.split(",") if part.strip()]
    if s.kind in (int, float):
        try:
            return s.kind(text)
        except ValueError:
            raise _fail(f"{where}: {s.rule()}", s.name, source) from None
    return text


def _check(s: Setting, value: Any, where: str, source: str) -> Any:
    """``value`` of ``s``'s type and within its rule (a list as a new list), else ConfigError."""
    bad = _fail(f"{where}: {s.rule()}", s.name, source)
    if s.kind is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if s.kind in (int, float):
        typed = isinstance(value, (int, float) if s.kind is float else int) and not isinstance(value, bool)
        # no float() before the range check: a huge TOML int compares exactly, never overflows
        if not typed or (isinstance(value, float) and not math.isfinite(value)) \
                or not s.lo <= value <= s.hi:  # type: ignore[operator]
            raise bad
        return s.kind(value)
    if s.kind is str:
        if not isinstance(value, str) or not value.isprintable() or (s.choices and value not in s.choices) \
                or (s.lo is not None and not s.lo <= len(value) <= s.hi):  # type: ignore[operator]
            raise bad
        if s.item is not None:
            try:
                s.item(value, s.name)
            except InvalidArgument as exc:
                raise _fail(f"{where}: {exc.message}", s.name, source) from None
        return value
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value) \
            or not s.lo <= len(value) <= s.hi:  # type: ignore[operator]
        raise bad
    for v in value:
        try:
            s.item(v, s.name)  # type: ignore[misc]
        except InvalidArgument as exc:
            raise _fail(f"{where}: {exc.message}", s.name, source) from None
    if len(set(value)) != len(value):
        raise _fail(f"{where}: lists an item twice", s.name, source)
    return list(value)


def _check_data(values: dict[str, Any], where: str, source: str) -> None:
    """``~`` expanded; an existing path must be a directory; the ipc socket path must fit."""
    data = values["data"] = os.path.expanduser(values["data"])
    if os.path.exists(data) and not os.path.isdir(data):
        raise _fail(f"{where}: data: {data} is not a directory", "data", source)
    sock = os.path.join(os.path.abspath(data), "zmesh-pub.ipc")
    if values["ipc"] and len(sock.encode()) > MAX_IPC_PATH_BYTES:
        raise _fail(f"{where}: the ipc socket path ipc://{sock} is {len(sock.encode())} bytes, over "
                    f"{MAX_IPC_PATH_BYTES}; use a shorter data path or --no-ipc (ipc = false)",
                    "data", source)


def _fail(message: str, key: str, source: str) -> ConfigError:
    """One line: control characters (a newline in a value or path) shown escaped."""
    return ConfigError(escape_controls(message), {"field": key, "source": source})


def _hint(key: str) -> str:
    close = difflib.get_close_matches(key, list(_BY_NAME), n=1)
    return f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(_BY_NAME)})"


def toml_text(value: Any) -> str:
    """``value`` as it is written in a TOML file, whole (`zmesh config show` prints these)."""
    if isinstance(value, (bool, str)):
        return json.dumps(value, ensure_ascii=False)  # true, false and "..." as in TOML
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(toml_text, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_text(v)}" for k, v in value.items()) + "}"
    return str(value)  # numbers (nan, inf, -inf as TOML writes them), dates


def _toml(value: Any) -> str:
    """``value`` as it would be written in the file, shortened for a message."""
    return _short(toml_text(value))


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


assert [f.name for f in fields(BrokerConfig)] == [*_BY_NAME, "sources"], "SETTINGS and BrokerConfig differ"
