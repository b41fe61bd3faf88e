"""Settings and their defaults, in one place: defaults < config file < ZMESH_* env < flags.

The config file is TOML (``conf/zmesh.toml`` is the documented example); it is read only
when named with ``--config`` or ``ZMESH_CONFIG``, so a broker runs with no file at all.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import ZmeshError

DEFAULT_PORT = 7700
DEFAULT_PUB_PORT = 7701
DEFAULT_TTL_S = 30.0
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_EVENT_LOG = 100_000
DEFAULT_DURABILITY = "full"


def default_data_dir() -> str:
    """$ZMESH_DATA, else $XDG_DATA_HOME/zmesh, else ~/.local/share/zmesh."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return os.path.join(base, "zmesh")


def default_broker() -> str:
    return f"tcp://127.0.0.1:{DEFAULT_PORT}"


class ConfigError(ZmeshError):
    code = "config"
    meaning = "the configuration is invalid"


@dataclass
class BrokerConfig:
    data: str = field(default_factory=default_data_dir)
    bind: list[str] = field(default_factory=lambda: [f"tcp://*:{DEFAULT_PORT}"])
    pub_bind: list[str] = field(default_factory=lambda: [f"tcp://*:{DEFAULT_PUB_PORT}"])
    #: also bind ipc:// endpoints in the data directory, for clients on this host
    ipc: bool = True
    durability: str = DEFAULT_DURABILITY
    default_ttl: float = DEFAULT_TTL_S
    event_log_size: int = DEFAULT_EVENT_LOG
    discovery: bool = True
    #: IP addresses zeroconf advertises on (empty: the default route's interface)
    interfaces: list[str] = field(default_factory=list)
    map_size: int = 1 << 33

    @classmethod
    def load(cls, path: str | None = None, env: dict[str, str] | None = None,
             **flags: Any) -> "BrokerConfig":
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = path or env.get("ZMESH_CONFIG")
        if path:
            try:
                with open(path, "rb") as fh:
                    values.update(tomllib.load(fh).get("broker", {}))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"cannot read config {path}: {exc}") from None
        known = {f.name: f for f in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ConfigError(f"unknown setting(s) in {path}: {', '.join(sorted(unknown))}")
        for name, f in known.items():
            raw = env.get("ZMESH_" + name.upper())
            if raw is not None:
                values[name] = _parse_env(name, raw, getattr(cls(), name))
        values.update({k: v for k, v in flags.items() if v is not None and v != () and v != []})
        for name in ("bind", "pub_bind", "interfaces"):
            if name in values:
                values[name] = list(values[name])
        if "data" in values:
            values["data"] = os.path.expanduser(values["data"])
        return cls(**values)


def _parse_env(name: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, list):
            return [part.strip() for part in raw.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"ZMESH_{name.upper()}={raw!r} is not a valid {type(default).__name__}") from None
    return raw
