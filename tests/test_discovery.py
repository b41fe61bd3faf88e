"""Tests for zmesh.discovery.

Unit tests never create a Zeroconf instance in the test process: that would send multicast on
the host's real interfaces. Everything that touches the network runs as a subprocess inside
network namespaces created here (``ip netns``), holding only ``lo`` or a veth pair whose
addresses exist nowhere else, and every namespace and process is removed at the end.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from zeroconf import ServiceInfo

from zmesh import interfaces
from zmesh.discovery import (
    PROTO,
    SERVICE_TYPE,
    Advertiser,
    BrokerInfo,
    broker_from_service_info,
    default_interfaces,
    parse_service,
)

REPO = Path(__file__).resolve().parent.parent
BROKER_ID = "abc123def4567890"

netns = pytest.mark.netns


# --------------------------------------------------------------------------- BrokerInfo


def test_endpoint_ipv4() -> None:
    b = BrokerInfo(broker_id="b", host="10.0.0.5", port=7700, pub_port=7701, version="1.0")
    assert b.endpoint == "tcp://10.0.0.5:7700"
    assert b.pub_endpoint == "tcp://10.0.0.5:7701"


def test_endpoint_ipv6_bracketed() -> None:
    b = BrokerInfo(broker_id="b", host="[fd00::5]", port=7700, pub_port=7701, version="1.0")
    assert b.endpoint == "tcp://[fd00::5]:7700"
    scoped = BrokerInfo(broker_id="b", host="[fe80::1%eth0]", port=1, pub_port=2, version="")
    assert scoped.endpoint == "tcp://[fe80::1%eth0]:1"


def test_endpoint_tolerates_unbracketed_ipv6() -> None:
    b = BrokerInfo(broker_id="b", host="fd00::5", port=7700, pub_port=7701, version="1.0")
    assert b.endpoint == "tcp://[fd00::5]:7700"


# --------------------------------------------------------------------------- TXT parsing


def _props(**over: Any) -> dict[bytes, bytes | None]:
    base: dict[str, Any] = {"id": BROKER_ID, "pub": "7701", "proto": PROTO, "version": "0.3.1"}
    base.update(over)
    return {k.encode(): (v.encode() if isinstance(v, str) else v) for k, v in base.items() if v is not ...}


def test_parse_service_basic() -> None:
    b = parse_service(_props(), addresses=["10.1.2.3"], port=7700)
    assert b == BrokerInfo(broker_id=BROKER_ID, host="10.1.2.3", port=7700, pub_port=7701, version="0.3.1")


def test_parse_service_prefers_ipv4_and_on_link_and_not_loopback() -> None:
    assert parse_service(_props(), addresses=["fd00::9", "10.1.2.3"], port=1).host == "10.1.2.3"
    assert parse_service(_props(), addresses=["127.0.0.1", "fd00::9"], port=1).host == "[fd00::9]"
    on_link = [ipaddress.ip_network("192.168.7.0/24")]
    got = parse_service(_props(), addresses=["10.1.2.3", "192.168.7.4"], port=1, local_networks=on_link)
    assert got.host == "192.168.7.4"
    # loopback is still usable when it is all there is (broker on the same host)
    assert parse_service(_props(), addresses=["127.0.0.1"], port=1).host == "127.0.0.1"


def test_parse_service_ipv6_link_local_keeps_scope() -> None:
    index, name = socket.if_nameindex()[0]
    got = parse_service(_props(), addresses=[f"fe80::1%{index}"], port=7700)
    assert got.host == f"[fe80::1%{name}]"
    assert got.endpoint == f"tcp://[fe80::1%{name}]:7700"
    assert parse_service(_props(), addresses=["fe80::1%nosuch9"], port=1).host == "[fe80::1%nosuch9]"


def test_parse_service_str_keys_and_missing_version() -> None:
    got = parse_service({"ID": "x", "pub": "2", "proto": "1"}, addresses=["10.0.0.1"], port=1)
    assert (got.broker_id, got.pub_port, got.version) == ("x", 2, "")


@pytest.mark.parametrize(
    ("props", "addresses", "port", "match"),
    [
        (_props(id=...), ["10.0.0.1"], 1, "'id' missing"),
        (_props(id=""), ["10.0.0.1"], 1, "'id' is empty"),
        (_props(id=None), ["10.0.0.1"], 1, "no value"),
        (_props(pub=...), ["10.0.0.1"], 1, "'pub' missing"),
        (_props(pub="http"), ["10.0.0.1"], 1, "not a port"),
        (_props(pub="70000"), ["10.0.0.1"], 1, "out of range"),
        (_props(proto="2"), ["10.0.0.1"], 1, "unsupported discovery proto"),
        (_props(proto=...), ["10.0.0.1"], 1, "unsupported discovery proto"),
        (_props(id=b"\xff\xfe"), ["10.0.0.1"], 1, "not UTF-8"),
        (_props(), [], 1, "no address"),
        (_props(), ["not-an-ip"], 1, "no address"),
        (_props(), ["10.0.0.1"], None, "not a port"),
        (_props(), ["10.0.0.1"], 0, "out of range"),
    ],
)
def test_parse_service_rejects(props: dict, addresses: list[str], port: int | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_service(props, addresses=addresses, port=port)


def test_broker_from_service_info_roundtrip() -> None:
    """The TXT record an Advertiser builds parses back into the same BrokerInfo (no network)."""
    info = ServiceInfo(
        SERVICE_TYPE,
        f"zmesh-abc.{SERVICE_TYPE}",
        port=7700,
        properties={"id": BROKER_ID, "pub": "7701", "proto": PROTO, "version": "9.9"},
        server="host.local.",
        parsed_addresses=["10.213.0.1", "fd00::1"],
    )
    assert broker_from_service_info(info) == BrokerInfo(
        broker_id=BROKER_ID, host="10.213.0.1", port=7700, pub_port=7701, version="9.9"
    )


# --------------------------------------------------------------------------- interfaces

ROUTES = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
down0\t00000000\t0100000A\t0002\t0\t0\t1\t00000000\t0\t0\t0
"""


def test_default_route_interface_lowest_metric_up_only() -> None:
    assert interfaces.default_route_interface(ROUTES) == "eth0"
    only_subnets = "\n".join(ROUTES.splitlines()[:2])
    assert interfaces.default_route_interface(only_subnets) is None
    assert interfaces.default_route_interface("") is None


def test_default_interfaces_reads_route_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    routes = tmp_path / "route"
    routes.write_text(ROUTES.replace("eth0", "lo"))
    monkeypatch.setattr(interfaces, "PROC_NET_ROUTE", str(routes))
    assert default_interfaces() == ["127.0.0.1"]


def test_default_interfaces_without_default_route_uses_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    routes = tmp_path / "route"
    routes.write_text(ROUTES.splitlines()[0] + "\n")
    monkeypatch.setattr(interfaces, "PROC_NET_ROUTE", str(routes))
    got = default_interfaces()
    assert "127.0.0.1" in got
    assert got[-1] == "127.0.0.1"  # loopback last
    assert all(ipaddress.ip_address(a).version == 4 for a in got)


def test_default_interfaces_real_table_is_ipv4() -> None:
    got = default_interfaces()  # reads /proc and getifaddrs only; sends nothing
    assert got and all(ipaddress.ip_address(a).version == 4 for a in got)


def test_choose_interfaces_explicit_env_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(interfaces.ENV_INTERFACES, raising=False)
    assert interfaces.choose_interfaces(None) == (default_interfaces(), False)
    monkeypatch.setenv(interfaces.ENV_INTERFACES, " 10.9.9.9, ,fe80::1%lo ")
    assert interfaces.choose_interfaces(None) == (["10.9.9.9", "fe80::1%lo"], True)
    # an explicit argument wins over the environment; interface names expand to their IPv4
    assert interfaces.choose_interfaces(["lo", "127.0.0.1"]) == (["127.0.0.1"], True)
    with pytest.raises(ValueError, match="ZMESH_INTERFACES"):
        monkeypatch.setenv(interfaces.ENV_INTERFACES, "no-such-if0")
        interfaces.choose_interfaces(None)
    with pytest.raises(ValueError, match="empty list"):
        interfaces.choose_interfaces([])


def test_advertised_addresses_skip_loopback_unless_explicit() -> None:
    adv = Advertiser(broker_id=BROKER_ID, port=7700, pub_port=7701, version="1")
    assert adv._advertised_addresses(["10.0.0.2", "127.0.0.1"], explicit=False) == ["10.0.0.2"]
    assert adv._advertised_addresses(["10.0.0.2", "127.0.0.1"], explicit=True) == ["10.0.0.2", "127.0.0.1"]
    assert adv._advertised_addresses(["127.0.0.1"], explicit=False) == ["127.0.0.1"]  # better than nothing
    assert adv._advertised_addresses(["fe80::1%lo"], explicit=True) == ["fe80::1"]


def test_advertiser_names_and_validation() -> None:
    adv = Advertiser(broker_id=BROKER_ID, port=7700, pub_port=7701, version="1")
    assert adv.service_name == f"zmesh-{BROKER_ID[:12]}.{SERVICE_TYPE}"
    assert adv.addresses == []
    named = Advertiser(broker_id="x", port=1, pub_port=2, version="1", name="lab broker")
    assert named.service_name == f"lab broker.{SERVICE_TYPE}"
    adv.close()  # closing an advertiser that never started is a no-op
    with pytest.raises(ValueError):
        Advertiser(broker_id="", port=1, pub_port=2, version="1")
    with pytest.raises(ValueError):
        Advertiser(broker_id="x", port=0, pub_port=2, version="1")
    with pytest.raises(ValueError):
        Advertiser(broker_id="x", port=1, pub_port=2, version="1", name="n" * 64)


# --------------------------------------------------------------------------- netns helpers


def _require_netns() -> None:
    if os.geteuid() != 0:
        pytest.skip("network-namespace tests need root (ip netns add)")
    if shutil.which("ip") is None:
        pytest.skip("network-namespace tests need the iproute2 'ip' command")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=10, capture_output=True, text=True)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZMESH_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def _in_ns(ns: str, code: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-c", code, *args]


def _run_json(ns: str, code: str, *args: str, timeout: float = 20) -> dict[str, Any]:
    """Run a snippet in a namespace; subprocess.run kills and reaps it if it overruns."""
    proc = subprocess.run(
        _in_ns(ns, code, *args), capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO
    )
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _read_json_line(proc: subprocess.Popen[str], timeout: float, want: str) -> dict[str, Any]:
    """Next JSON line from proc's stdout containing key ``want``, within timeout."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {want!r} line from pid {proc.pid} within {timeout} s")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if not ready:
            continue
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
            raise AssertionError(f"pid {proc.pid} closed stdout before {want!r}; rc={proc.poll()} {err}")
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if want in msg:
            return msg


@pytest.fixture
def lo_ns() -> Iterator[str]:
    """A namespace with only loopback up: multicast cannot leave it."""
    _require_netns()
    name = f"zmt-{os.getpid()}-lo"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=10, capture_output=True)


@pytest.fixture
def lan() -> Iterator[dict[str, str]]:
    """Two namespaces joined by a veth pair: a two-host LAN that exists only on this machine."""
    _require_netns()
    a, b = f"zmt-{os.getpid()}-a", f"zmt-{os.getpid()}-b"
    subnet = 10 + os.getpid() % 240
    addr_a, addr_b = f"10.213.{subnet}.1", f"10.213.{subnet}.2"
    created: list[str] = []
    try:
        for ns in (a, b):
            _ip("netns", "add", ns)
            created.append(ns)
        # created inside ns a with its peer moved straight into ns b: never visible on the host
        _ip("-n", a, "link", "add", "zmv0", "type", "veth", "peer", "name", "zmv1", "netns", b)
        for ns, dev, addr in ((a, "zmv0", addr_a), (b, "zmv1", addr_b)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
            # default route via the veth so default_interfaces() picks it
            _ip("-n", ns, "route", "add", "default", "dev", dev)
        yield {"a": a, "b": b, "addr_a": addr_a, "addr_b": addr_b}
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], timeout=10, capture_output=True)


ADVERTISE = """
import json, signal, sys, threading
from zmesh.discovery import Advertiser
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
adv = Advertiser(broker_id=sys.argv[1], port=7700, pub_port=7701, version="0.0-test")
try:
    adv.start()
    print(json.dumps({"ready": True, "addresses": adv.addresses, "name": adv.service_name}), flush=True)
    sys.stdin.read()  # until the test closes our stdin
finally:
    adv.close()
    print(json.dumps({"closed": True, "threads": [t.name for t in threading.enumerate()]}), flush=True)
"""

DISCOVER = """
import dataclasses, json, sys, threading, time
from zmesh.discovery import discover
from zmesh.errors import Unreachable
kwargs = json.loads(sys.argv[1])
t0 = time.monotonic()
try:
    b = discover(**kwargs)
    out = {"ok": True, "broker": dataclasses.asdict(b), "endpoint": b.endpoint}
except Unreachable as e:
    out = {"ok": False, "code": e.code, "message": e.message, "details": e.details}
out["elapsed"] = time.monotonic() - t0
out["threads"] = [t.name for t in threading.enumerate()]
print(json.dumps(out))
"""

BROWSE = """
import dataclasses, json, sys, threading, time
from zmesh.discovery import browse
t0 = time.monotonic()
found = browse(timeout=float(sys.argv[1]))
print(json.dumps({"brokers": [dataclasses.asdict(b) for b in found], "elapsed": time.monotonic() - t0,
                  "threads": [t.name for t in threading.enumerate()]}))
"""

# A bare zeroconf browser that stays up across the advertiser's close, to see its goodbye:
# a fresh browse() has an empty cache and could not tell a goodbye from silence.
WATCH = """
import json, sys, threading
from zeroconf import ServiceBrowser, Zeroconf
from zmesh.discovery import SERVICE_TYPE, default_interfaces
zc = Zeroconf(interfaces=default_interfaces())
def on_change(zeroconf, service_type, name, state_change):
    print(json.dumps({"event": state_change.name, "name": name}), flush=True)
browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
try:
    sys.stdin.read()
finally:
    browser.cancel()
    zc.close()
"""


def _popen(ns: str, code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        _in_ns(ns, code, *args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=REPO,
    )


# --------------------------------------------------------------------------- netns tests


@netns
def test_discover_unreachable_when_nobody_answers(lo_ns: str) -> None:
    out = _run_json(lo_ns, DISCOVER, "{}")
    assert out["ok"] is False
    assert out["code"] == "unreachable"
    assert out["message"] == (
        "no zmesh broker answered on the LAN within 3.0 s (zeroconf _zmesh._tcp.local.); "
        "pass --broker or set ZMESH_BROKER"
    )
    assert out["details"]["interfaces"] == ["127.0.0.1"]  # no default route: every interface = lo
    assert 2.9 <= out["elapsed"] < 8.0  # waited the whole timeout, then closed promptly
    assert out["threads"] == ["MainThread"]  # zeroconf closed, its threads joined


@netns
def test_same_host_on_loopback_only(lo_ns: str) -> None:
    """With nothing but loopback, the broker still advertises there and a local agent finds it."""
    code = """
import dataclasses, json, threading
from zmesh.discovery import Advertiser, browse, discover
with Advertiser(broker_id="loopy", port=7800, pub_port=7801, version="v") as adv:
    addresses = adv.addresses
    b = discover(timeout=5)
print(json.dumps({"addresses": addresses, "broker": dataclasses.asdict(b),
                  "threads": [t.name for t in threading.enumerate()]}))
"""
    out = _run_json(lo_ns, code)
    assert out["addresses"] == ["127.0.0.1"]
    assert out["broker"] == {"broker_id": "loopy", "host": "127.0.0.1", "port": 7800, "pub_port": 7801, "version": "v"}
    assert out["threads"] == ["MainThread"]


@netns
def test_lan_discover_browse_and_goodbye(lan: dict[str, str]) -> None:
    a, b = lan["a"], lan["b"]
    procs: list[subprocess.Popen[str]] = []
    try:
        adv = _popen(a, ADVERTISE, BROKER_ID)
        procs.append(adv)
        ready = _read_json_line(adv, 15, "ready")
        assert ready["addresses"] == [lan["addr_a"]]
        assert ready["name"] == f"zmesh-{BROKER_ID[:12]}.{SERVICE_TYPE}"

        watch = _popen(b, WATCH)
        procs.append(watch)
        added = _read_json_line(watch, 10, "event")
        assert added == {"event": "Added", "name": ready["name"]}

        out = _run_json(b, DISCOVER, json.dumps({"timeout": 5}))
        assert out["ok"] is True, out
        assert out["broker"] == {
            "broker_id": BROKER_ID,
            "host": lan["addr_a"],
            "port": 7700,
            "pub_port": 7701,
            "version": "0.0-test",
        }
        assert out["endpoint"] == f"tcp://{lan['addr_a']}:7700"
        assert out["elapsed"] < 3
        assert out["threads"] == ["MainThread"]

        # pinning: the right id is found, any other id is not
        pinned = _run_json(b, DISCOVER, json.dumps({"timeout": 5, "broker_id": BROKER_ID}))
        assert pinned["ok"] is True and pinned["broker"]["broker_id"] == BROKER_ID
        other = _run_json(b, DISCOVER, json.dumps({"timeout": 1.0, "broker_id": "someone-else"}))
        assert other["ok"] is False
        assert other["message"].startswith("no zmesh broker with id someone-else answered on the LAN within 1.0 s")

        listed = _run_json(b, BROWSE, "2")
        assert [x["broker_id"] for x in listed["brokers"]] == [BROKER_ID]
        assert listed["brokers"][0]["host"] == lan["addr_a"]
        assert listed["elapsed"] < 2.0  # returned after the settle time, not the whole timeout
        assert listed["threads"] == ["MainThread"]

        # close the advertiser: it unregisters (goodbye) and stops zeroconf cleanly
        assert adv.stdin is not None
        adv.stdin.close()
        closed = _read_json_line(adv, 10, "closed")
        assert closed["threads"] == ["MainThread"]
        assert adv.wait(timeout=10) == 0

        # the long-lived browser saw the goodbye right away (the record TTL would be minutes)
        removed = _read_json_line(watch, 5, "event")
        assert removed == {"event": "Removed", "name": ready["name"]}

        for _ in range(3):
            after = _run_json(b, BROWSE, "2")
            if not after["brokers"]:
                break
        assert after["brokers"] == []
    finally:
        for proc in procs:
            _stop(proc)
