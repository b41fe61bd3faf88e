"""Broker configuration: every key of the settings table is checked for type and range, from
the file, the environment and flags alike; every refusal is one line naming the key and its
source; conf/zmesh.toml and the table cannot drift apart."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmesh import protocol
from zmesh.config import (SETTINGS, BrokerConfig, ConfigError, Setting, known_env,
                          unknown_env)
from zmesh.transport.endpoint import MAX_IPC_PATH_BYTES
from zmesh.errors import ConfigError as ErrorsConfigError
from zmesh.errors import InvalidArgument
from zmesh.protocol import number_text as _num
from zmesh.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf" / "zmesh.toml"
NAMES = [s.name for s in SETTINGS]

_MANY_ENDPOINTS = "[" + ", ".join(f'"tcp://*:{7000 + i}"' for i in range(17)) + "]"
_BAD_ENDPOINTS = ['"tcp://*:7700"', "[]", "[7700]", '["tcp://*:x"]', '["udp://*:7700"]',
                  '["tcp://*:99999"]', '["tcp://a b:1"]', '["tcp://\\u0001:1"]', '[""]',
                  '["tcp://*:1", "tcp://*:1"]', _MANY_ENDPOINTS, "true", "7700", "{ a = 1 }"]
_BAD_BOOLS = ['"true"', "1", "0", '"yes"', "[]", "nan", '"\\u0001"']

#: key -> bad values as TOML text; every setting of the table must have some
BAD_FILE: dict[str, list[str]] = {
    "data": ['""', "3", "true", '["/tmp/x"]', '"a\\u0001b"', '"a\\nb"', "{ x = 1 }", "nan"],
    "bind": _BAD_ENDPOINTS,
    "pub_bind": _BAD_ENDPOINTS,
    "ipc": _BAD_BOOLS,
    "durability": ['"slow"', '""', '"FULL"', "1", "true", '["full"]', '"full\\u0001"'],
    "default_ttl": ['"thirty"', '"30"', "-3", "0", "0.05", "604801", "1e300", "nan", "inf",
                    "-inf", "true", "[30]", '"3\\u0001"'],
    "event_log_size": ["0", "-1", "100000001", "1.5", "100000.0", '"100000"', "true", "nan",
                       "inf", "9223372036854775807", "[1]"],
    "discovery": _BAD_BOOLS,
    "interfaces": ['"eth0"', '[""]', '["a b"]', '["eth\\u00010"]', "[1]",
                   "[" + ", ".join(f'"10.0.0.{i}"' for i in range(65)) + "]", "true",
                   '["eth0", "eth0"]'],
    "map_size": ["0", "-1", "1024", "1099511627777", "8.5e9", '"8GiB"', "true", "nan", "inf",
                 "-9223372036854775808"],
    "ack_wait": ['"30"', "0", "0.05", "-1", "604801", "nan", "inf", "true", "[30]"],
    "message_retention": ["0", "-1", "100000001", "1.5", '"1000"', "true", "nan", "[1]"],
    "message_max_age": ["0", "0.5", "-1", "315360001", '"7d"', "nan", "inf", "true"],
    "low_batch": ["-0.1", "10.5", "nan", "inf", '"0.5"', "true", "[0.5]"],
    "audit": ['"some"', '""', '"WRITES"', '"none"', "true", "1", '["writes"]', '"all\\u0001"'],
    "audit_retention": ["0", "-1", "100000001", "1.5", '"1000"', "true", "nan", "[1]"],
    "secure": _BAD_BOOLS,
    "log_format": ['"JSON"', '""', '"yaml"', "1", "true", '["json"]', '"json\\u0001"'],
    "drain_timeout": ["-1", "300.5", "nan", "inf", '"5"', "true", "[5]"],
    "key_file": ['""', "3", "true", '["/k"]', '"a\\u0001b"', '"a\\nb"'],
    "authorized_keys": ['""', "3", "true", '["/k"]', '"a\\u0001b"', '"a\\nb"'],
    "metrics_token": ['""', "3", "true", '["/t"]', '"a\\u0001b"', '"a\\nb"', '"' + "x" * 5000 + '"'],
    "metrics": ['""', "7702", "true", '["127.0.0.1:7702"]', '"7702"', '"127.0.0.1"', '"127.0.0.1:"', '":7702"',
                '"127.0.0.1:65536"', '"127.0.0.1:-1"', '"127.0.0.1:7702x"', '"bad host!:80"', '"::1:7702"',
                '"[::g]:7702"', '"999.1.1.1:80"', '"a\\u0001b:1"', '"a\\nb:1"', '"127.0.0.1:\\u0661"'],
    "mesh": ['""', '"Lab"', '"a b"', '"-x"', '".x"', '"x/y"', '"' + "x" * 64 + '"', "3", "true", '["lab"]',
             '"l\\u0001b"', '"la\\nb"', '"caf\\u00e9"'],
    "store": ['""', '"lmdb"', '"etcd://"', '"etcd://h"', '"etcd://h:0"', '"etcd://h:99999"', '"http://h:2379"',
              '"etcd://h:1,"', "3", "true", '["etcd://h:1"]', '"etcd://a\\u0001:1"'],
    "leader_ttl": ["1", "0", "61", "2.5", '"5"', "true", "nan", "[5]"],
}
_BAD_ENV_BOOLS = ["", "  ", "maybe", "2", "truee", "y", "t", "\x01", "nan", "-1", "0.0"]
_BAD_ENV_ENDPOINTS = ["", ",", " , ", "tcp://*:x", "udp://*:1", "tcp://*:7700 tcp://*:7701",
                      "tcp://\x01:1", ",".join(f"tcp://*:{7000 + i}" for i in range(17)),
                      "tcp://*:1,tcp://*:1", "tcp://*:0x10"]
#: key -> bad ZMESH_* strings; every setting of the table must have some
BAD_ENV: dict[str, list[str]] = {
    "data": ["", "   ", "a\x01b", "a\tb"],
    "bind": _BAD_ENV_ENDPOINTS,
    "pub_bind": _BAD_ENV_ENDPOINTS,
    "ipc": _BAD_ENV_BOOLS,
    "durability": ["", "slow", "FULL", "\x01", "full,fast"],
    "default_ttl": ["", "thirty", "-3", "0", "nan", "inf", "-inf", "1e9", "30s", "0x10", "\x01"],
    "event_log_size": ["", "0", "1.5", "1e3", "nan", "-1", "100000001", "ten", "\x01"],
    "discovery": _BAD_ENV_BOOLS,
    "interfaces": ["", "a b", "eth\x010", ",".join(f"10.0.0.{i}" for i in range(65))],
    "map_size": ["", "0", "1024", "8GiB", "nan", "1e12", "2199023255552", "\x01"],
    "store": ["", "   ", "lmdb", "etcd://", "etcd://h", "etcd://h:0", "etcd://h:99999", "http://h:2379",
              "etcd://h:1,", "etcd://h:x", "etcd://a\x01:1"],
    "leader_ttl": ["", "1", "0", "61", "2.5", "nan", "5s", "\x01"],
    "ack_wait": ["", "0", "-1", "nan", "inf", "30s", "\x01"],
    "message_retention": ["", "0", "1.5", "1e3", "-1", "ten", "\x01"],
    "message_max_age": ["", "0", "-1", "nan", "7d", "\x01"],
    "low_batch": ["", "-1", "11", "nan", "fast", "\x01"],
    "audit": ["", "   ", "some", "All", "writes,all", "\x01", "0"],
    "audit_retention": ["", "0", "1.5", "1e6", "-1", "100000001", "ten", "\x01"],
    "secure": _BAD_ENV_BOOLS,
    "key_file": ["", "   ", "a\x01b"],
    "authorized_keys": ["", "   ", "a\x01b"],
    "metrics_token": ["", "   ", "a\x01b", "x" * 5000],
    "metrics": ["", "   ", "7702", "localhost", "localhost:99999", "a b:80", "[::1:80", "h:\x01", "1.2.3.4.5:80"],
    "mesh": ["", "   ", "Lab", "a b", "-x", "x" * 64, "l\x01b", "caf\u00e9", "lab,prod"],
    "log_format": ["", "JSON", "yaml", "text,json", "\x01"],
    "drain_timeout": ["", "-1", "301", "nan", "5s", "\x01"],
}


def _cases(table: dict[str, list[str]]) -> list[Any]:
    """(key, bad value) for every setting of the table; a setting without bad values fails."""
    return [pytest.param(s.name, bad, id=f"{s.name}-{bad!r}")
            for s in SETTINGS for bad in (table.get(s.name) or [None])]


def _write(tmp_path: Path, text: str, name: str = "z.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _one_line(err: ConfigError) -> str:
    assert "\n" not in err.message and "\r" not in err.message, err.message
    assert err.message.strip(), "empty message"
    return err.message


# --------------------------------------------------------------------------- the table


def test_table_and_broker_config_agree() -> None:
    assert [f.name for f in fields(BrokerConfig)] == [*NAMES, "sources"]
    assert len(set(NAMES)) == len(NAMES)
    default = BrokerConfig()
    for s in SETTINGS:
        assert isinstance(s, Setting) and s.env == "ZMESH_" + s.name.upper() and s.doc
        assert getattr(default, s.name) == s.default_value()
        assert "\n" not in s.doc and "\n" not in s.rule()
    assert default.sources == dict.fromkeys(NAMES, "default")


def test_every_setting_has_bad_values() -> None:
    assert set(BAD_FILE) == set(NAMES) and all(BAD_FILE.values())
    assert set(BAD_ENV) == set(NAMES) and all(BAD_ENV.values())


def test_rules_print_integers_as_integers() -> None:
    rules = {s.name: s.rule() for s in SETTINGS}
    assert rules["default_ttl"] == (f"must be a number of seconds in {_num(protocol.MIN_TTL_S)}"
                                    f"..{_num(protocol.MAX_TTL_S)}")
    assert "0.1..604800" in rules["default_ttl"]
    assert "1048576..1099511627776" in rules["map_size"]
    assert "1..100000000" in rules["event_log_size"]
    for rule in rules.values():
        assert "e+" not in rule and not re.search(r"\d\.0\b", rule), rule


def test_config_error_lives_in_errors() -> None:
    assert ConfigError is ErrorsConfigError
    assert issubclass(ConfigError, InvalidArgument) and ConfigError.code == "config"


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("name,bad", _cases(BAD_FILE))
def test_bad_file_value_is_refused(tmp_path: Path, name: str, bad: str | None) -> None:
    assert bad is not None, f"setting {name} has no bad file values in BAD_FILE"
    path = _write(tmp_path, f"[broker]\n{name} = {bad}\n")
    tomllib.loads(Path(path).read_text())  # the case is valid TOML: the value is what is bad
    with pytest.raises(ConfigError) as exc:
        BrokerConfig.load(path, env={}, data=str(tmp_path) if name != "data" else None)
    message = _one_line(exc.value)
    assert f"[broker] {name} = " in message and path in message
    assert exc.value.details == {"field": name, "source": f"file {path}"}


@pytest.mark.parametrize("name,bad", _cases(BAD_ENV))
def test_bad_env_value_is_refused(tmp_path: Path, name: str, bad: str | None) -> None:
    assert bad is not None, f"setting {name} has no bad env values in BAD_ENV"
    env_name = "ZMESH_" + name.upper()
    env = {env_name: bad} if name == "data" else {env_name: bad, "ZMESH_DATA": str(tmp_path)}
    with pytest.raises(ConfigError) as exc:
        BrokerConfig.load(env=env)
    message = _one_line(exc.value)
    assert message.startswith(f"{env_name}=")
    assert exc.value.details == {"field": name, "source": f"env {env_name}"}


@pytest.mark.parametrize("name,bad", [
    ("default_ttl", "30"), ("default_ttl", float("nan")), ("default_ttl", -3), ("default_ttl", True),
    ("event_log_size", 1.0), ("event_log_size", 0), ("map_size", 10**400), ("ipc", 1),
    ("discovery", "no"), ("bind", "tcp://*:7700"), ("bind", ["tcp://*:x"]), ("pub_bind", [1]),
    ("durability", "slow"), ("data", ""), ("data", 3), ("interfaces", "eth0"), ("interfaces", ["a\nb"]),
    ("mesh", "Lab"), ("mesh", 3), ("mesh", ""), ("mesh", ["lab"]), ("metrics", "7702"), ("metrics", 7702),
    ("metrics", "127.0.0.1:70000"),
])
def test_bad_flag_is_refused(tmp_path: Path, name: str, bad: Any) -> None:
    flags = {name: bad} if name == "data" else {name: bad, "data": str(tmp_path)}
    with pytest.raises(ConfigError) as exc:
        BrokerConfig.load(env={}, **flags)
    assert _one_line(exc.value).startswith(f"flag {name}=")
    assert exc.value.details == {"field": name, "source": "flag"}


def test_unknown_flag_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown flag defualt_ttl \(did you mean default_ttl\?\)"):
        BrokerConfig.load(env={}, defualt_ttl=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(NAMES), raw=st.text(max_size=40))
def test_any_env_string_loads_or_is_one_config_error(name: str, raw: str) -> None:
    s = {x.name: x for x in SETTINGS}[name]
    env = {s.env: raw.replace("\x00", ""), "ZMESH_DATA": "/nonexistent/zmesh"} if name != "data" \
        else {s.env: raw.replace("\x00", "") + "/nonexistent"}
    try:
        cfg = BrokerConfig.load(env=env)
    except ConfigError as exc:
        _one_line(exc)
        assert exc.details["field"] == name
        return
    value = getattr(cfg, name)
    assert isinstance(value, s.kind) and cfg.sources[name] == f"env {s.env}"
    if s.kind in (int, float):
        assert s.lo <= value <= s.hi


_toml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(NAMES), value=_toml_values)
def test_any_flag_value_loads_or_is_one_config_error(name: str, value: Any) -> None:
    flags = {name: value} if name == "data" else {name: value, "data": "/nonexistent/zmesh"}
    try:
        cfg = BrokerConfig.load(env={}, **flags)
    except ConfigError as exc:
        _one_line(exc)
        assert exc.details["field"] == name
        return
    assert isinstance(getattr(cfg, name), {x.name: x for x in SETTINGS}[name].kind)


# --------------------------------------------------------------------------- good values


def test_good_file_values_load_with_their_types(tmp_path: Path) -> None:
    path = _write(tmp_path, f"""
[broker]
data = "{tmp_path}/d"
bind = ["tcp://127.0.0.1:7800", "ipc:///tmp/z.ipc"]
pub_bind = ["tcp://*:0"]
ipc = false
durability = "fast"
default_ttl = 5
event_log_size = 10
discovery = false
interfaces = ["127.0.0.1", "lo"]
map_size = 1048576
ack_wait = 2
message_retention = 50
message_max_age = 3600
low_batch = 0
audit = "all"
audit_retention = 5
secure = true
key_file = "{tmp_path}/k/broker.key_secret"
authorized_keys = "{tmp_path}/k/allowed"
mesh = "lab-2.east_1"
store = "etcd://127.0.0.1:2379,10.0.0.2:2380"
leader_ttl = 7
log_format = "json"
drain_timeout = 0
metrics = "[::1]:0"
metrics_token = "{tmp_path}/metrics.token"
""")
    cfg = BrokerConfig.load(path, env={})
    assert cfg == BrokerConfig(data=f"{tmp_path}/d", bind=["tcp://127.0.0.1:7800", "ipc:///tmp/z.ipc"],
                               pub_bind=["tcp://*:0"], ipc=False, durability="fast", default_ttl=5.0,
                               event_log_size=10, discovery=False, interfaces=["127.0.0.1", "lo"],
                               map_size=1 << 20, ack_wait=2.0, message_retention=50, message_max_age=3600.0,
                               low_batch=0.0, audit="all", audit_retention=5, secure=True,
                               key_file=f"{tmp_path}/k/broker.key_secret",
                               authorized_keys=f"{tmp_path}/k/allowed", mesh="lab-2.east_1",
                               store="etcd://127.0.0.1:2379,10.0.0.2:2380", leader_ttl=7, log_format="json", drain_timeout=0.0, metrics="[::1]:0",
                               metrics_token=f"{tmp_path}/metrics.token")
    assert type(cfg.ack_wait) is float and type(cfg.message_retention) is int
    assert type(cfg.default_ttl) is float and type(cfg.event_log_size) is int
    assert cfg.sources == dict.fromkeys(NAMES, f"file {path}")


def test_good_env_values_load_with_their_types(tmp_path: Path) -> None:
    cfg = BrokerConfig.load(env={
        "ZMESH_DATA": str(tmp_path), "ZMESH_BIND": " tcp://127.0.0.1:7800, ,ipc:///tmp/z.ipc,",
        "ZMESH_IPC": " Off ", "ZMESH_DISCOVERY": "YES", "ZMESH_DEFAULT_TTL": "2.5",
        "ZMESH_EVENT_LOG_SIZE": "1_000", "ZMESH_MAP_SIZE": "1099511627776", "ZMESH_DURABILITY": "none",
        "ZMESH_INTERFACES": "lo", "ZMESH_PUB_BIND": "tcp://*:7801", "ZMESH_ACK_WAIT": "1.5",
        "ZMESH_MESSAGE_RETENTION": "10_000", "ZMESH_MESSAGE_MAX_AGE": "86400", "ZMESH_LOW_BATCH": "0.25",
        "ZMESH_AUDIT": " off ", "ZMESH_AUDIT_RETENTION": "2_000",
        "ZMESH_SECURE": "on", "ZMESH_KEY_FILE": "/k/b.key_secret", "ZMESH_AUTHORIZED_KEYS": "/k/allowed",
        "ZMESH_MESH": " lab ", "ZMESH_LOG_FORMAT": "json", "ZMESH_DRAIN_TIMEOUT": "12.5",
        "ZMESH_METRICS": "localhost:7702", "ZMESH_METRICS_TOKEN": "/k/metrics.token",
        "ZMESH_STORE": "etcd://h1:2379", "ZMESH_LEADER_TTL": "9"})
    assert (cfg.bind, cfg.pub_bind) == (["tcp://127.0.0.1:7800", "ipc:///tmp/z.ipc"], ["tcp://*:7801"])
    assert (cfg.ipc, cfg.discovery, cfg.durability, cfg.interfaces) == (False, True, "none", ["lo"])
    assert (cfg.default_ttl, cfg.event_log_size, cfg.map_size) == (2.5, 1000, 1 << 40)
    assert (cfg.ack_wait, cfg.message_retention, cfg.message_max_age, cfg.low_batch) == (1.5, 10_000, 86400.0, 0.25)
    assert (cfg.audit, cfg.audit_retention) == ("off", 2000)
    assert (cfg.secure, cfg.key_file, cfg.authorized_keys) == (True, "/k/b.key_secret", "/k/allowed")
    assert (cfg.mesh, cfg.log_format, cfg.drain_timeout, cfg.metrics) == ("lab", "json", 12.5, "localhost:7702")
    assert cfg.metrics_token == "/k/metrics.token"
    assert (cfg.store, cfg.leader_ttl) == ("etcd://h1:2379", 9)
    assert cfg.sources == {s.name: f"env {s.env}" for s in SETTINGS}


def test_a_metrics_token_without_the_metrics_endpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        BrokerConfig.load(env={"ZMESH_DATA": str(tmp_path), "ZMESH_METRICS_TOKEN": "/k/metrics.token"})
    assert exc.value.details == {"field": "metrics_token", "source": "env ZMESH_METRICS_TOKEN"}
    assert "metrics endpoint that is off" in _one_line(exc.value)


@pytest.mark.parametrize("raw,value", [(v, True) for v in ("1", "true", "TRUE", " yes ", "On")]
                         + [(v, False) for v in ("0", "false", "False", "no", " OFF\n")])
def test_env_bools_accept_exactly_the_documented_words(tmp_path: Path, raw: str, value: bool) -> None:
    assert BrokerConfig.load(env={"ZMESH_DATA": str(tmp_path), "ZMESH_DISCOVERY": raw}).discovery is value


def test_bool_env_error_lists_the_words(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        BrokerConfig.load(env={"ZMESH_DATA": str(tmp_path), "ZMESH_DISCOVERY": "maybe"})
    assert exc.value.message == "ZMESH_DISCOVERY='maybe': must be one of 1, 0, true, false, yes, no, on, off"


def test_precedence_file_env_flags_and_sources(tmp_path: Path) -> None:
    path = _write(tmp_path, f'[broker]\ndata = "{tmp_path}"\ndefault_ttl = 10\ndurability = "fast"\n')
    env = {"ZMESH_DEFAULT_TTL": "20", "ZMESH_DURABILITY": "none"}
    cfg = BrokerConfig.load(path, env=env, default_ttl=40.0, durability=None, bind=[], pub_bind=(),
                            ipc=None)
    assert (cfg.default_ttl, cfg.durability, cfg.data) == (40.0, "none", str(tmp_path))
    assert cfg.sources["default_ttl"] == "flag"
    assert cfg.sources["durability"] == "env ZMESH_DURABILITY"
    assert cfg.sources["data"] == f"file {path}"
    assert cfg.sources["bind"] == cfg.sources["ipc"] == "default"
    assert BrokerConfig.load(path, env=env).default_ttl == 20.0
    assert BrokerConfig.load(path, env={}).default_ttl == 10.0
    # ZMESH_CONFIG names the file; --config wins over it
    assert BrokerConfig.load(env={"ZMESH_CONFIG": path}).sources["data"] == f"file {path}"
    other = _write(tmp_path, f'[broker]\ndata = "{tmp_path}"\ndefault_ttl = 7\n', "other.toml")
    assert BrokerConfig.load(other, env={"ZMESH_CONFIG": path}).default_ttl == 7.0
    assert cfg == BrokerConfig(**{f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "sources"})


def test_a_bad_mesh_says_the_rule(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        BrokerConfig.load(env={"ZMESH_DATA": str(tmp_path), "ZMESH_MESH": "Lab"})
    assert exc.value.message == ("ZMESH_MESH='Lab': is not a mesh name: must be 1..63 lowercase letters, digits, "
                                 "'-', '_' or '.', starting with a letter or digit")
    assert BrokerConfig.load(env={"ZMESH_DATA": str(tmp_path)}).mesh == "default"


def test_data_tilde_is_expanded(tmp_path: Path) -> None:
    cfg = BrokerConfig.load(env={}, data="~/zmesh-test-data")
    assert cfg.data == os.path.expanduser("~/zmesh-test-data")


# --------------------------------------------------------------------------- file structure


@pytest.mark.parametrize("text,expected,field", [
    ("[brokr]\ndefault_ttl = 3\n", "unknown section [brokr] in {path} (known: [broker])", "brokr"),
    ("[broker]\n[extra.sub]\n", "unknown section [extra] in {path} (known: [broker])", "extra"),
    ("default_ttl = 3\n", "config {path}: unknown top-level key default_ttl (settings go in a [broker] "
                          "section)", "default_ttl"),
    ("broker = 3\n", "config {path}: broker = 3: must be the [broker] section", "broker"),
    ("[broker]\ndefualt_ttl = 3\n", "config {path}: unknown key [broker] defualt_ttl (did you mean "
                                    "default_ttl?)", "defualt_ttl"),
    ("[broker]\nbinds = []\n", "config {path}: unknown key [broker] binds (did you mean bind?)", "binds"),
    ("[broker]\nzzz = 1\n", "config {path}: unknown key [broker] zzz (known: " + ", ".join(NAMES) + ")",
     "zzz"),
])
def test_unknown_sections_and_keys_are_refused(tmp_path: Path, text: str, expected: str, field: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        BrokerConfig.load(path, env={})
    assert exc.value.message == expected.format(path=path)
    assert exc.value.details == {"field": field, "source": f"file {path}"}


def test_bind_as_a_string_says_to_use_a_list(tmp_path: Path) -> None:
    path = _write(tmp_path, '[broker]\nbind = "tcp://*:7700"\n')
    with pytest.raises(ConfigError) as exc:
        BrokerConfig.load(path, env={})
    assert exc.value.message.endswith('must be a list of 1..16 endpoints, e.g. bind = ["tcp://*:7700"]')


def test_default_ttl_message(tmp_path: Path) -> None:
    path = _write(tmp_path, '[broker]\ndefault_ttl = "thirty"\n')
    with pytest.raises(ConfigError) as exc:
        BrokerConfig.load(path, env={})
    assert exc.value.message == (f'config {path}: [broker] default_ttl = "thirty": must be a number of '
                                 "seconds in 0.1..604800")


@pytest.mark.parametrize("content", [b"[broker\n", b"[broker]\nipc = tru\n", b"\xff\xfe[broker]\n",
                                     b"[broker]\nipc = true\nipc = false\n"])
def test_bad_toml_is_one_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as exc:
        BrokerConfig.load(str(path), env={})
    assert _one_line(exc.value).startswith(f"config {path}: not valid TOML: ")
    assert exc.value.details == {"field": "config", "source": "flag"}


def test_unreadable_file_is_one_config_error(tmp_path: Path) -> None:
    for path, why in ((tmp_path / "missing.toml", "No such file"), (tmp_path, "Is a directory")):
        with pytest.raises(ConfigError) as exc:
            BrokerConfig.load(env={"ZMESH_CONFIG": str(path)})
        assert _one_line(exc.value).startswith(f"config {path}: cannot read: {why}")
        assert exc.value.details == {"field": "config", "source": "env ZMESH_CONFIG"}
    with pytest.raises(ConfigError, match="ZMESH_CONFIG=' ': is empty"):
        BrokerConfig.load(env={"ZMESH_CONFIG": " "})


# --------------------------------------------------------------------------- data directory


def test_data_that_is_a_file_is_refused(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ConfigError) as exc:
        BrokerConfig.load(env={"ZMESH_DATA": str(afile)})
    assert exc.value.message == f"ZMESH_DATA={str(afile)!r}: data: {afile} is not a directory"
    assert exc.value.details == {"field": "data", "source": "env ZMESH_DATA"}
    # a directory, existing or not yet, is fine
    assert BrokerConfig.load(env={}, data=str(tmp_path)).data == str(tmp_path)
    assert BrokerConfig.load(env={}, data=str(tmp_path / "new")).sources["data"] == "flag"


def test_ipc_path_too_long_is_refused_unless_ipc_is_off(tmp_path: Path) -> None:
    data = str(tmp_path / ("d" * MAX_IPC_PATH_BYTES))
    path = _write(tmp_path, f'[broker]\ndata = "{data}"\n')
    with pytest.raises(ConfigError) as exc:
        BrokerConfig.load(path, env={})
    message = _one_line(exc.value)
    assert f"over {MAX_IPC_PATH_BYTES}" in message and "--no-ipc" in message and "ipc://" in message
    assert exc.value.details == {"field": "data", "source": f"file {path}"}
    assert BrokerConfig.load(path, env={}, ipc=False).data == data
    assert BrokerConfig.load(path, env={"ZMESH_IPC": "off"}).ipc is False


# --------------------------------------------------------------------------- environment names


def test_known_and_unknown_env() -> None:
    known = known_env()
    assert {s.env for s in SETTINGS} <= known
    assert {"ZMESH_CONFIG", "ZMESH_BROKER", "ZMESH_INTERFACES", "ZMESH_DEFAULT_TTL", "ZMESH_MESH",
            "ZMESH_KNOWN_HOSTS", "ZMESH_SERVER_KEY", "ZMESH_KEY"} <= known
    env = {"ZMESH_DEFUALT_TTL": "3", "ZMESH_BROKER": "tcp://h:1", "ZMESH_DATA": "/x", "HOME": "/h",
           "ZMESH_BINDS": "x", "zmesh_lower": "1"}
    assert unknown_env(env) == ["ZMESH_BINDS", "ZMESH_DEFUALT_TTL"]
    assert unknown_env({}) == []


# --------------------------------------------------------------------------- conf/zmesh.toml


def test_example_file_documents_every_setting_with_its_default() -> None:
    text = CONF.read_text()
    tomllib.loads(text)
    lines = text.splitlines()
    for s in SETTINGS:
        at = [i for i, line in enumerate(lines) if re.match(rf"(# )?{s.name} = ", line)]
        assert len(at) == 1, f"{s.name} appears {len(at)} times in {CONF}"
        line = lines[at[0]]
        if callable(s.default):  # depends on the machine: shown commented out
            assert line.startswith("# "), f"{s.name}: a machine-dependent default is commented out"
        else:
            assert not line.startswith("#"), f"{s.name} is commented out"
            assert tomllib.loads(line)[s.name] == s.default_value(), f"{s.name}: default differs"
        comment = []
        for above in reversed(lines[:at[0]]):
            if not above.startswith("#"):
                break
            comment.append(above)
        assert comment, f"{s.name} has no comment"
        if s.kind in (int, float):
            assert f"{_num(s.lo)}..{_num(s.hi)}" in " ".join(comment), f"{s.name}: range differs"
    assert not [k for k in tomllib.loads(text) if k != "broker"]
    commented = {s.name for s in SETTINGS if callable(s.default)}
    assert set(tomllib.loads(text)["broker"]) | commented == set(NAMES)


def test_example_file_loads_to_the_defaults() -> None:
    cfg = BrokerConfig.load(str(CONF), env={})
    assert cfg == BrokerConfig.load(env={})
    assert cfg.sources["data"] == "default" and cfg.sources["bind"] == f"file {CONF}"


# --------------------------------------------------------------------------- the command


def _run_broker(tmp_path: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZMESH_")}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "zmesh", "broker", *args, "--data", str(tmp_path / "data"),
         "--bind", f"tcp://127.0.0.1:{free_port()}", "--pub-bind", f"tcp://127.0.0.1:{free_port()}",
         "--no-discovery"],
        env=env, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], *names: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for name in names:
        assert name in lines[0]


def test_cli_broker_with_bad_config_file_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = _write(tmp_path, '[broker]\ndefault_ttl = "thirty"\n', "BAD.toml")
    _assert_one_line_error(_run_broker(tmp_path, "--config", bad), "default_ttl", bad)


def test_cli_broker_with_bad_env_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = _run_broker(tmp_path, ZMESH_EVENT_LOG_SIZE="0")
    _assert_one_line_error(proc, "ZMESH_EVENT_LOG_SIZE")
    proc = _run_broker(tmp_path, "--config", _write(tmp_path, "[brokr]\n", "typo.toml"))
    _assert_one_line_error(proc, "[brokr]")


# --------------------------------------------------------------------------- through the CLI
def _broker_cli(name: str, env: dict[str, str], *args: str) -> Any:
    """``zmesh broker`` in-process (CliRunner): a bad setting must stop it before it binds.
    Loopback endpoints come as flags, except for the setting under test (a flag would win)."""
    from click.testing import CliRunner

    from zmesh.cli import main

    clean = {k: None for k in os.environ if k.startswith("ZMESH_")}
    flags = ["--no-discovery"] + [arg for key, flag, ep in (("bind", "--bind", "tcp://127.0.0.1:1"),
                                                             ("pub_bind", "--pub-bind", "tcp://127.0.0.1:2"))
                                  if key != name for arg in (flag, ep)]
    return CliRunner().invoke(main, ["broker", *flags, *args], env={**clean, **env}, prog_name="zmesh")


@pytest.mark.parametrize("name,bad", _cases(BAD_FILE))
def test_bad_file_value_is_exit_2_in_one_line_from_the_cli(tmp_path: Path, name: str, bad: str) -> None:
    path = _write(tmp_path, f"[broker]\n{name} = {bad}\n")
    extra = () if name == "data" else ("--data", str(tmp_path / "d"))
    r = _broker_cli(name, {}, "--config", path, *extra)
    assert r.exit_code == 2, (r.stdout, r.stderr, r.exception)
    assert r.stderr.count("\n") == 1 and f"[broker] {name} = " in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("name,bad", _cases(BAD_ENV))
def test_bad_env_value_is_exit_2_in_one_line_from_the_cli(tmp_path: Path, name: str, bad: str) -> None:
    env_name = "ZMESH_" + name.upper()
    env = {env_name: bad} if name == "data" else {env_name: bad, "ZMESH_DATA": str(tmp_path / "d")}
    r = _broker_cli(name, env)
    assert r.exit_code == 2, (r.stdout, r.stderr, r.exception)
    assert r.stderr.count("\n") == 1 and env_name in r.stderr and "Traceback" not in r.stderr
