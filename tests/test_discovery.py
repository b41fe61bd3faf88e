"""Tests for zmesh.discovery.

Unit tests never create a Zeroconf instance in the test process: that would send multicast on
the host's real interfaces. Everything that touches the network runs as a subprocess inside
network namespaces created here (``ip netns``), holding only ``lo`` or a veth pair whose
addresses exist nowhere else, and every namespace and process is removed at the end.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import queue
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import zmq
from zeroconf import ServiceInfo

import zmesh
from zmesh import AsyncClient, Client
from zmesh.discovery import interfaces
from zmesh.cli._docs import JSON_SHAPES
from zmesh.discovery import (
    ENV_KNOWN_HOSTS,
    PROTO,
    SERVICE_TYPE,
    Advertiser,
    BrokerInfo,
    Browse,
    KnownHosts,
    Pin,
    Pinned,
    Trust,
    broker_from_service_info,
    decide,
    default_interfaces,
    default_known_hosts,
    find_broker,
    known_hosts_file,
    parse_service,
    pick,
    txt_properties,
)
from zmesh.discovery import trust as trust_mod
from zmesh.errors import ConfigError, InvalidArgument, Unreachable, UntrustedBroker, exit_code
from zmesh.client._finder import Finder
from zmesh.transport.keys import fingerprint, keygen, load_public
from zmesh.testing import BrokerProcess

from .conftest import until, wait_for

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


# --------------------------------------------------------------------------- mesh and key in the record

KEY_A = zmq.curve_keypair()[0].decode()
KEY_B = zmq.curve_keypair()[0].decode()


def test_parse_service_mesh_and_key() -> None:
    b = parse_service(_props(mesh="lab", key=KEY_A), addresses=["10.1.2.3"], port=7700)
    assert (b.mesh, b.key) == ("lab", KEY_A)
    assert b.fingerprint == fingerprint(KEY_A.encode()) and len(b.fingerprint) == 16
    # a broker older than meshes belongs to the default mesh; no key (or an empty one) is security off
    old = parse_service(_props(), addresses=["10.1.2.3"], port=7700)
    assert (old.mesh, old.key, old.fingerprint) == ("default", None, None)
    assert parse_service(_props(key=""), addresses=["10.1.2.3"], port=7700).key is None


@pytest.mark.parametrize(
    ("props", "match"),
    [
        (_props(mesh="Lab"), "not a mesh name"),
        (_props(mesh=""), "not a mesh name"),
        (_props(mesh="a b"), "not a mesh name"),
        (_props(mesh=None), "'mesh' has no value"),
        (_props(key="short"), "not a CurveZMQ public key"),
        (_props(key="~" * 40), "not valid Z85"),
        (_props(key=None), "'key' has no value"),
        (_props(id="x" * 65), "longer than 64"),
        (_props(id="a b"), "control characters or spaces"),
        (_props(version="1\x1b[31m"), "control characters"),
        ({**_props(), "ID": "other"}, "given twice"),
        ({**_props(), b"\xff": b"1"}, "name is not UTF-8"),
    ],
)
def test_parse_service_rejects_bad_mesh_key_and_fields(props: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_service(props, addresses=["10.0.0.1"], port=1)


def test_advertised_record_parses_back_with_mesh_and_key() -> None:
    props = txt_properties(broker_id=BROKER_ID, pub_port=7701, version="1", mesh="lab", key=KEY_A)
    info = ServiceInfo(SERVICE_TYPE, f"zmesh-abc.{SERVICE_TYPE}", port=7700, properties=props,
                       server="host.local.", parsed_addresses=["10.213.0.1"])
    got = broker_from_service_info(info)
    assert (got.mesh, got.key, got.broker_id) == ("lab", KEY_A, BROKER_ID)
    plain = txt_properties(broker_id=BROKER_ID, pub_port=7701, version="1", mesh="default", key=None)
    assert "key" not in plain and plain["proto"] == PROTO == "1"


def test_advertiser_checks_its_mesh() -> None:
    with pytest.raises(InvalidArgument, match="not a mesh name"):
        Advertiser(broker_id="x", port=1, pub_port=2, version="1", mesh="Lab")


def _b(broker_id: str, key: str | None = None, mesh: str = "lab", port: int = 7700) -> BrokerInfo:
    return BrokerInfo(broker_id=broker_id, host="10.0.0.9", port=port, pub_port=port + 1, version="1", mesh=mesh,
                      key=key)


def test_two_brokers_of_one_mesh_pick_the_lowest_id_and_warn(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "zmesh.discovery")
    first, second = _b("bbb"), _b("aaa", port=7800)
    assert pick([first, second], "lab") is second
    assert pick([second, first], "lab") is second  # whatever order the answers came in
    assert "2 brokers serve mesh 'lab'" in caplog.text and "aaa at tcp://10.0.0.9:7800" in caplog.text
    assert "bbb at tcp://10.0.0.9:7700" in caplog.text
    caplog.clear()
    assert pick([first], "solo") is first and caplog.text == ""


# --------------------------------------------------------------------------- pinning decisions


def _config_pin(key: str) -> Pin:
    return Pin(key, "ZMESH_SERVER_KEY", "ZMESH_SERVER_KEY")


def test_decide_pinned_by_config_refuses_another_key_naming_both() -> None:
    trust = Trust("lab", _config_pin(KEY_A), "ZMESH_KEY")
    with pytest.raises(UntrustedBroker) as exc:
        decide([_b("spoof", KEY_B)], trust, trust.pin)
    msg = exc.value.message
    assert fingerprint(KEY_A.encode()) in msg and fingerprint(KEY_B.encode()) in msg
    assert msg == (f"refused broker spoof at tcp://10.0.0.9:7700 of mesh 'lab': it has key "
                   f"{fingerprint(KEY_B.encode())}, not the key {fingerprint(KEY_A.encode())} pinned by ZMESH_SERVER_KEY")
    assert exc.value.code == "untrusted_broker" and exit_code(exc.value) == 1
    assert exc.value.details["field"] == "ZMESH_SERVER_KEY"
    with pytest.raises(UntrustedBroker, match=r"it has no key \(security off\), not the key"):
        decide([_b("plain")], trust, trust.pin)


def test_decide_pinned_joins_the_right_broker_beside_a_spoofer(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "zmesh.discovery")
    trust = Trust("lab", _config_pin(KEY_A), "ZMESH_KEY")
    real, spoof = _b("zzz", KEY_A), _b("aaa", KEY_B)  # the spoofer even has the lower id
    assert decide([spoof, real], trust, trust.pin) is real
    assert "refused broker aaa" in caplog.text and fingerprint(KEY_B.encode()) in caplog.text


def test_decide_known_hosts_pin_names_the_line_to_remove(tmp_path: Path) -> None:
    hosts = KnownHosts(tmp_path / "known_hosts")
    line = hosts.pin("lab", KEY_A)
    pin = Pin.from_line(hosts, line)
    with pytest.raises(UntrustedBroker) as exc:
        decide([_b("new", KEY_B)], Trust("lab", None, "ZMESH_KEY", hosts), pin)
    assert exc.value.message.endswith(f"not the key {fingerprint(KEY_A.encode())} pinned on first use in "
                                      f"{tmp_path / 'known_hosts'} line 3; if the broker's key changed on purpose, "
                                      "remove that line")
    assert fingerprint(KEY_B.encode()) in exc.value.message


def test_decide_first_use_needs_a_key_pair_and_a_key_pair_needs_security() -> None:
    with pytest.raises(ConfigError) as exc:
        decide([_b("sec", KEY_A)], Trust("lab"), None)
    assert "set ZMESH_KEY" in exc.value.message and exc.value.details["field"] == "ZMESH_KEY"
    assert exit_code(exc.value) == 2
    with pytest.raises(UntrustedBroker, match="this client has a key pair .ZMESH_KEY., so it expects a secure "
                                              "broker; unset ZMESH_KEY"):
        decide([_b("plain")], Trust("lab", None, "ZMESH_KEY"), None)
    # security off on both sides: as before pinning existed
    plain = _b("plain")
    assert decide([plain], Trust("lab"), None) is plain
    # a client with a key pair prefers the secure broker of two
    secure = _b("zzz", KEY_A)
    assert decide([_b("aaa"), secure], Trust("lab", None, "ZMESH_KEY"), None) is secure


def test_find_broker_pins_on_first_use_then_refuses_another_key(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust on first use end to end, with the browse replaced (no packet is sent)."""
    answers: list[BrokerInfo] = []
    monkeypatch.setattr(trust_mod, "collect", lambda *a, accept, **k: Browse(
        [b for b in answers if accept(b)], [b for b in answers if not accept(b)], ["10.0.0.1"]))
    hosts = KnownHosts(tmp_path / "kh" / "known_hosts")
    trust = Trust("lab", None, "ZMESH_KEY", hosts)
    answers[:] = [_b("real", KEY_A), _b("other-mesh", KEY_B, mesh="prod")]
    broker, pin = find_broker(trust, 1.0)
    assert broker.broker_id == "real" and pin is not None and pin.key == KEY_A
    assert hosts.get("lab") == Pinned("lab", KEY_A, 3)
    assert "prod" not in hosts.entries()  # only the mesh joined is pinned
    assert stat.S_IMODE((tmp_path / "kh").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "kh" / "known_hosts").stat().st_mode) == 0o600
    answers[:] = [_b("spoof", KEY_B)]
    with pytest.raises(UntrustedBroker, match="known_hosts line 3; if the broker's key changed"):
        find_broker(trust, 1.0)
    answers[:] = [_b("x", KEY_B, mesh="prod")]
    with pytest.raises(Unreachable, match=r"no zmesh broker of mesh 'lab' .* \(brokers of mesh 'prod' answered\)"):
        find_broker(trust, 1.0)


# --------------------------------------------------------------------------- known hosts


def test_known_hosts_pins_once_per_mesh(tmp_path: Path) -> None:
    hosts = KnownHosts(tmp_path / "known_hosts")
    assert hosts.entries() == {}
    assert hosts.pin("lab", KEY_A, "broker b1") == Pinned("lab", KEY_A, 3)
    assert hosts.pin("lab", KEY_B) == Pinned("lab", KEY_A, 3)  # the first pin stays
    assert hosts.pin("prod", KEY_B) == Pinned("prod", KEY_B, 4)
    lines = (tmp_path / "known_hosts").read_text().splitlines()
    assert lines[0].startswith("# zmesh known hosts") and lines[2] == f"lab {KEY_A}  # broker b1"
    assert not list(tmp_path.glob(".known_hosts.*")), "no temporary file left behind"


@pytest.mark.parametrize(("text", "match"), [
    ("lab\n", "line 1: expected 'MESH KEY'"),
    (f"# c\n\nLab {KEY_A}\n", "line 3: 'Lab' is not a mesh name"),
    ("lab notakey\n", "line 1: 'notakey' is not a broker key"),
    (f"lab {KEY_A}\nlab {KEY_B}\n", r"mesh 'lab' is pinned twice with two keys \(lines 1 and 2\)"),
])
def test_known_hosts_bad_lines_are_config_errors_naming_the_line(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=match) as exc:
        KnownHosts(path, "ZMESH_KNOWN_HOSTS").entries()
    assert exc.value.message.startswith(f"ZMESH_KNOWN_HOSTS: {path}: ")
    assert exc.value.details["field"] == "ZMESH_KNOWN_HOSTS"


def test_known_hosts_same_key_twice_is_fine_and_others_may_not_write(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"lab {KEY_A} first\nlab {KEY_A} again\n")
    path.chmod(0o600)
    assert KnownHosts(path).get("lab") == Pinned("lab", KEY_A, 1)
    path.chmod(0o666)
    with pytest.raises(ConfigError, match="others can write it .mode 0666.; chmod 600"):
        KnownHosts(path).get("lab")


def test_known_hosts_concurrent_pins_all_land_and_agree(tmp_path: Path) -> None:
    hosts_path = tmp_path / "known_hosts"
    meshes = [f"m{i}" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda m: KnownHosts(hosts_path).pin(m, KEY_A), meshes))
        keys = [zmq.curve_keypair()[0].decode() for _ in range(8)]
        got = list(pool.map(lambda k: KnownHosts(hosts_path).pin("race", k), keys))
    entries = KnownHosts(hosts_path).entries()
    assert set(entries) == {*meshes, "race"}
    assert {p.key for p in got} == {entries["race"].key}, "every racer got the one pin that landed"


def test_known_hosts_file_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KNOWN_HOSTS, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert default_known_hosts() == str(tmp_path / "cfg" / "zmesh" / "known_hosts")
    assert known_hosts_file(None).path == tmp_path / "cfg" / "zmesh" / "known_hosts"
    monkeypatch.setenv(ENV_KNOWN_HOSTS, str(tmp_path / "kh"))
    got = known_hosts_file(None)
    assert (got.path, got.field) == (tmp_path / "kh", ENV_KNOWN_HOSTS)
    assert known_hosts_file(tmp_path / "arg").field == "known_hosts"
    for bad, field in (("", ENV_KNOWN_HOSTS), ("a\nb", ENV_KNOWN_HOSTS)):
        monkeypatch.setenv(ENV_KNOWN_HOSTS, bad)
        with pytest.raises(InvalidArgument) as exc:
            known_hosts_file(None)
        assert exc.value.details == {"field": field}
    with pytest.raises(InvalidArgument, match="is a directory"):
        known_hosts_file(tmp_path)


def test_a_client_checks_mesh_and_keys_before_any_packet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*a: Any, **k: Any) -> Any:
        raise AssertionError("discovery ran before the arguments were checked")

    monkeypatch.setattr(trust_mod, "collect", no_network)
    monkeypatch.delenv("ZMESH_BROKER", raising=False)
    monkeypatch.setenv(ENV_KNOWN_HOSTS, str(tmp_path / "kh"))
    with pytest.raises(InvalidArgument, match="mesh: 'Lab' is not a mesh name"):
        Client(mesh="Lab")
    monkeypatch.setenv("ZMESH_MESH", "a b")
    with pytest.raises(InvalidArgument, match="ZMESH_MESH: 'a b' is not a mesh name"):
        Client()
    monkeypatch.delenv("ZMESH_MESH")
    with pytest.raises(InvalidArgument, match="key is needed too"):
        Client(server_key=KEY_A)  # a pinned broker key without this client's key pair
    with pytest.raises(InvalidArgument, match="known_hosts: .* is a directory"):
        Client(known_hosts=str(tmp_path))
    with pytest.raises(InvalidArgument, match="mesh: 'Lab' is not a mesh name"):
        AsyncClient(mesh="Lab")


# --------------------------------------------------------------------------- following a moved broker


@pytest.fixture
def fake_discovery(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Discovery replaced by what the test says the LAN answers now (no packet is sent);
    ``calls`` counts the finds. The netns tests below run the real thing."""
    state: dict[str, Any] = {"broker": None, "calls": 0}

    def find(self: Finder, timeout: float) -> tuple[str, tuple[tuple[int, Any], ...]]:
        state["calls"] += 1
        broker = state["broker"]
        if broker is None:
            raise Unreachable("no zmesh broker of mesh 'default' answered (fake)")
        self.broker = broker
        return broker.endpoint, ()

    monkeypatch.setattr(Finder, "find", find)
    monkeypatch.delenv("ZMESH_BROKER", raising=False)
    yield state


def _info(b: BrokerProcess) -> BrokerInfo:
    return BrokerInfo(broker_id="b", host="127.0.0.1", port=b.port, pub_port=b.pub_port, version="")


def test_a_discovered_client_follows_its_broker_to_another_port(
        tmp_path: Path, fake_discovery: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "zmesh.client")
    first = BrokerProcess(tmp_path / "data").start()
    second: BrokerProcess | None = None
    fake_discovery["broker"] = _info(first)
    c = Client(agent="w", timeout=1.0)
    pinned = Client(first.endpoint, timeout=0.5)  # given an endpoint: it never moves
    try:
        got: list[str] = []
        c.subscribe(lambda ev: got.append(ev.topic), ["msg."], since=0)
        c.publish("one")
        wait_for(lambda: "msg.one" in got, what="the first event")
        first.stop()
        second = BrokerProcess(first.data).start()  # the same data on other (free) ports
        assert (second.port, second.pub_port) != (first.port, first.pub_port)
        fake_discovery["broker"] = _info(second)
        seq = c.publish("two")  # times out at the old port, finds the new one, is sent again
        assert seq > 0 and c.endpoint == second.endpoint
        assert f"moved from {first.endpoint} to {second.endpoint}" in caplog.text
        wait_for(lambda: "msg.two" in got, timeout=20, what="the event stream to follow the broker")
        assert c.stats("w")["id"] == "w"  # the agent's lease came along (the broker restored it)
        calls = fake_discovery["calls"]
        with pytest.raises(Unreachable):
            pinned.status()
        assert fake_discovery["calls"] == calls and pinned.endpoint == first.endpoint
    finally:
        c.close()
        pinned.close()
        for b in (first, second):
            if b is not None:
                b.stop()
                b.kill()


def test_an_async_discovered_client_follows_its_broker(tmp_path: Path, fake_discovery: dict[str, Any]) -> None:
    first = BrokerProcess(tmp_path / "data").start()
    second: BrokerProcess | None = None
    fake_discovery["broker"] = _info(first)

    async def run() -> None:
        nonlocal second
        got: list[str] = []
        async with AsyncClient(agent="aw", timeout=1.0) as c:
            c.subscribe(lambda ev: got.append(ev.topic), ["msg."], since=0)
            received: list[Any] = []
            await c.on_message(received.append)
            await c.publish("one")
            await until(lambda: "msg.one" in got, "the first event")
            first.stop()
            second = await asyncio.to_thread(lambda: BrokerProcess(first.data).start())
            fake_discovery["broker"] = _info(second)
            assert await c.publish("two") > 0
            assert c.endpoint == second.endpoint
            await until(lambda: "msg.two" in got, "the event stream to follow the broker", timeout=20)
            await c.send("hello", to="aw")  # a push reaches the agent on its new connection
            await until(lambda: received, "the push after the move")

    try:
        asyncio.run(run())
    finally:
        for b in (first, second):
            if b is not None:
                b.stop()
                b.kill()


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


#: proc -> the queue its stdout reader thread fills (None at end of file)
_READERS: weakref.WeakKeyDictionary[subprocess.Popen[str], queue.SimpleQueue[str | None]] = \
    weakref.WeakKeyDictionary()


def _stdout_lines(proc: subprocess.Popen[str]) -> queue.SimpleQueue[str | None]:
    """proc's stdout lines, read by a thread of their own: select() on a buffered pipe would
    miss a second line that arrived in the same read as the first."""
    lines = _READERS.get(proc)
    if lines is None:
        lines = _READERS[proc] = queue.SimpleQueue()
        out = proc.stdout
        assert out is not None

        def pump() -> None:
            try:
                for line in out:
                    lines.put(line)
            except (OSError, ValueError):  # closed by the test
                pass
            lines.put(None)

        threading.Thread(target=pump, daemon=True, name=f"stdout-{proc.pid}").start()
    return lines


def _read_json_line(proc: subprocess.Popen[str], timeout: float, want: str) -> dict[str, Any]:
    """Next JSON line from proc's stdout containing key ``want`` (any line: ""), within timeout."""
    lines = _stdout_lines(proc)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {want!r} line from pid {proc.pid} within {timeout} s")
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            continue
        if line is None:
            lines.put(None)  # end of file stays the answer
            err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
            raise AssertionError(f"pid {proc.pid} closed stdout before {want!r}; rc={proc.poll()} {err}")
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if not want or want in msg:
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
        "no zmesh broker of mesh 'default' answered on the LAN within 3.0 s (zeroconf _zmesh._tcp.local.); "
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
    assert out["broker"] == {"broker_id": "loopy", "host": "127.0.0.1", "port": 7800, "pub_port": 7801, "version": "v",
                             "mesh": "default", "key": None}
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
            "mesh": "default",
            "key": None,
        }
        assert out["endpoint"] == f"tcp://{lan['addr_a']}:7700"
        assert out["elapsed"] < 3
        assert out["threads"] == ["MainThread"]

        # pinning: the right id is found, any other id is not
        pinned = _run_json(b, DISCOVER, json.dumps({"timeout": 5, "broker_id": BROKER_ID}))
        assert pinned["ok"] is True and pinned["broker"]["broker_id"] == BROKER_ID
        other = _run_json(b, DISCOVER, json.dumps({"timeout": 1.0, "broker_id": "someone-else"}))
        assert other["ok"] is False
        assert other["message"].startswith(
            "no zmesh broker of mesh 'default' with id someone-else answered on the LAN within 1.0 s")

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


# --------------------------------------------------------------------------- issue 17 across namespaces


class NsBroker:
    """``zmesh broker`` with discovery on, inside a namespace, logging to a file; stopped by PID."""

    def __init__(self, ns: str, data: Path, port: int, pub_port: int, *extra: str) -> None:
        self.ns, self.data, self.port, self.pub_port, self.extra = ns, data, port, pub_port, extra
        self.log = data.parent / f"{data.name}-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.broker_id = ""

    def start(self, timeout: float = 30) -> "NsBroker":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, sys.executable, "-m", "zmesh", "broker", "--data", str(self.data),
                 "--bind", f"tcp://*:{self.port}", "--pub-bind", f"tcp://*:{self.pub_port}", "--no-ipc", *self.extra],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=_env(PYTHONUNBUFFERED="1"),
                cwd=REPO)
        deadline = time.monotonic() + timeout
        while "advertising zmesh broker" not in self.text():
            assert self.proc.poll() is None, f"broker exited with {self.proc.returncode}:\n{self.text()}"
            assert time.monotonic() < deadline, f"broker not advertised within {timeout} s:\n{self.text()}"
            time.sleep(0.05)  # polling a log file for a condition, with a deadline
        self.broker_id = re.findall(r"zmesh broker ready: id=(\S+)", self.text())[-1]
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


FREE_PORTS = """
import json, socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("0.0.0.0", 0))
print(json.dumps([s.getsockname()[1] for s in socks]))
"""

SPOOF = """
import json, sys
from zmesh.discovery import Advertiser
adv = Advertiser(broker_id=sys.argv[1], port=int(sys.argv[2]), pub_port=int(sys.argv[2]) + 1, version="0.1.0",
                 mesh=sys.argv[3], key=sys.argv[4])
try:
    adv.start()
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.read()
finally:
    adv.close()
"""

#: a long-lived agent (Client or AsyncClient, made with no endpoint) driven by lines on stdin:
#: "publish TOPIC" publishes and answers with the broker's status; events come as {"event"}
WALKER = """
import asyncio, faulthandler, json, logging, signal, sys, threading
from zmesh import AsyncClient, Client, ZmeshError
faulthandler.register(signal.SIGTERM, chain=True)  # a walker stopped by the test shows where it was
logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
mode, mesh = sys.argv[1], sys.argv[2]
lock = threading.Lock()
def say(**kw):
    with lock:
        print(json.dumps(kw), flush=True)
if mode == "sync":
    c = Client(mesh=mesh, agent="walker", timeout=1.5)
    c.subscribe(lambda ev: say(event=ev.topic), ["msg."], since=0)
    say(ready=c.endpoint)
    for line in sys.stdin:
        try:
            c.publish(line.split()[1])
            say(status=c.status()["broker_id"], endpoint=c.endpoint)
        except ZmeshError as exc:
            say(error=exc.code, message=exc.message)
    c.close()
else:
    async def main():
        async with AsyncClient(mesh=mesh, agent="awalker", timeout=1.5) as c:
            c.subscribe(lambda ev: say(event=ev.topic), ["msg."], since=0)
            say(ready=c.endpoint)
            while line := await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline):
                try:
                    await c.publish(line.split()[1])
                    say(status=(await c.status())["broker_id"], endpoint=c.endpoint)
                except ZmeshError as exc:
                    say(error=exc.code, message=exc.message)
    asyncio.run(main())
"""


def _free_ports(ns: str, n: int) -> list[int]:
    ports = json.loads(subprocess.run(_in_ns(ns, FREE_PORTS, str(n)), capture_output=True, text=True, check=True,
                                      timeout=20, env=_env(), cwd=REPO).stdout)
    assert len(set(ports)) == n
    return ports


def _zmesh(ns: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m zmesh ARGS`` in a namespace (killed and reaped if it overruns)."""
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "zmesh", *args], capture_output=True,
                          text=True, timeout=60, env=_env(**env), cwd=REPO, stdin=subprocess.DEVNULL)


def _stop_all(procs: list[Any]) -> None:
    for proc in procs:
        if isinstance(proc, NsBroker):
            proc.stop()
        else:
            _stop(proc)


ONLY_5353 = """
import json, sys, time
from zmesh.discovery import discover, mdns
real = mdns._open_zeroconf
def no_querier(addresses, *, unicast=False):
    if unicast:  # as if a firewall dropped the answers to the querier's ephemeral port
        raise OSError("querier blocked by the test")
    return real(addresses)
mdns._open_zeroconf = no_querier
t0 = time.monotonic()
b = discover(timeout=5)
print(json.dumps({"broker_id": b.broker_id, "elapsed": time.monotonic() - t0}))
"""


@netns
def test_lan_discovery_works_through_port_5353_alone(lan: dict[str, str]) -> None:
    """The browser on 5353 finds the broker when the ephemeral-port querier hears nothing (a
    firewall that lets only mDNS's port in)."""
    adv = _popen(lan["a"], ADVERTISE, BROKER_ID)
    try:
        _read_json_line(adv, 15, "ready")
        out = _run_json(lan["b"], ONLY_5353)
        assert out["broker_id"] == BROKER_ID and out["elapsed"] < 3, out
    finally:
        _stop(adv)


@netns
def test_lan_a_client_finds_the_broker_with_no_address(lan: dict[str, str], tmp_path: Path) -> None:
    """Issue 17 acceptance: an agent in one namespace finds the broker in another over the
    veth with no address given; `zmesh discover` lists it."""
    port, pub = _free_ports(lan["a"], 2)
    broker = NsBroker(lan["a"], tmp_path / "data", port, pub)
    try:
        broker.start()
        r = _zmesh(lan["b"], "--discover", "--json", "status", ZMESH_KNOWN_HOSTS=str(tmp_path / "kh"))
        assert r.returncode == 0, r.stderr
        status = json.loads(r.stdout)
        assert status["broker_id"] == broker.broker_id
        r = _zmesh(lan["b"], "discover", "--json")
        assert r.returncode == 0, r.stderr
        listed = json.loads(r.stdout)
        assert tuple(listed) == JSON_SHAPES["discover"][0]  # type: ignore[index]
        assert listed["brokers"] == [{
            "mesh": "default", "broker_id": broker.broker_id, "endpoint": f"tcp://{lan['addr_a']}:{port}",
            "pub_endpoint": f"tcp://{lan['addr_a']}:{pub}", "key": None, "fingerprint": None,
            "version": zmesh.__version__, "preferred": True}]
        text = _zmesh(lan["b"], "discover")
        assert text.stdout == (f"default\t{broker.broker_id}\ttcp://{lan['addr_a']}:{port}\tkey none\t"
                               f"zmesh {zmesh.__version__}\n")
        assert not (tmp_path / "kh").exists(), "a broker with security off is never pinned"
    finally:
        assert broker.stop() == 0, broker.text()
    r = _zmesh(lan["b"], "discover", "--timeout", "1", "--json")
    assert r.returncode == 3 and json.loads(r.stderr)["code"] == "unreachable", r


@netns
def test_lan_meshes_stay_apart_and_two_brokers_of_one_mesh_pick_the_lowest_id(
        lan: dict[str, str], tmp_path: Path) -> None:
    """Issue 17 acceptance: two meshes on one segment stay apart; two brokers of one mesh:
    every client joins the lowest broker id and says so."""
    ports = _free_ports(lan["a"], 6)
    red1 = NsBroker(lan["a"], tmp_path / "red1", ports[0], ports[1], "--mesh", "red")
    red2 = NsBroker(lan["a"], tmp_path / "red2", ports[2], ports[3], "--mesh", "red")
    blue = NsBroker(lan["a"], tmp_path / "blue", ports[4], ports[5], "--mesh", "blue")
    try:
        for b in (red1, red2, blue):
            b.start()
        for _ in range(3):  # a client of each mesh joins only its mesh's broker, every time
            r = _zmesh(lan["b"], "--mesh", "blue", "--json", "status")
            assert r.returncode == 0 and json.loads(r.stdout)["broker_id"] == blue.broker_id, r.stderr
            r = _zmesh(lan["b"], "--discover", "--json", "status", ZMESH_MESH="red")
            lowest = min(red1, red2, key=lambda b: b.broker_id)
            assert r.returncode == 0 and json.loads(r.stdout)["broker_id"] == lowest.broker_id, r.stderr
            assert "2 brokers serve mesh 'red'" in r.stderr and red1.broker_id in r.stderr \
                and red2.broker_id in r.stderr
        r = _zmesh(lan["b"], "--mesh", "green", "--timeout", "1", "status")
        assert r.returncode == 3 and "no zmesh broker of mesh 'green'" in r.stderr, r.stderr
        assert "(brokers of mesh 'blue', 'red' answered)" in r.stderr
        listed = json.loads(_zmesh(lan["b"], "discover", "--json").stdout)["brokers"]
        assert {(b["mesh"], b["broker_id"], b["preferred"]) for b in listed} == {
            ("blue", blue.broker_id, True), ("red", lowest.broker_id, True),
            ("red", max(red1, red2, key=lambda b: b.broker_id).broker_id, False)}
        only = json.loads(_zmesh(lan["b"], "--mesh", "blue", "discover", "--json").stdout)["brokers"]
        assert [b["broker_id"] for b in only] == [blue.broker_id]
    finally:
        for b in (red1, red2, blue):
            assert b.stop() == 0, b.text()


@netns
def test_lan_a_pinned_client_refuses_a_spoofing_broker(lan: dict[str, str], tmp_path: Path) -> None:
    """Issue 17 acceptance: a broker advertising the same mesh with another key is refused by
    a pinned client (pinned by ZMESH_SERVER_KEY, and pinned on first use), naming both keys."""
    data = tmp_path / "data"
    keygen(data / "keys", "broker")
    _pub, client_secret = keygen(tmp_path / "client", "alice")
    (data / "keys" / "authorized").mkdir(mode=0o700)
    shutil.copy(tmp_path / "client" / "alice.key", data / "keys" / "authorized" / "alice.key")
    real_key = load_public(data / "keys" / "broker.key", "test").decode()
    fake_key = zmq.curve_keypair()[0].decode()
    real_fp, fake_fp = fingerprint(real_key.encode()), fingerprint(fake_key.encode())
    hosts = tmp_path / "cfg" / "known_hosts"
    pinned = {"ZMESH_SERVER_KEY": real_key, "ZMESH_KEY": str(client_secret), "ZMESH_KNOWN_HOSTS": str(hosts)}
    tofu = {"ZMESH_KEY": str(client_secret), "ZMESH_KNOWN_HOSTS": str(hosts)}
    port, pub, fake_port = _free_ports(lan["a"], 3)
    broker = NsBroker(lan["a"], data, port, pub, "--mesh", "sec", "--secure")
    procs: list[Any] = [broker]
    try:
        spoof = _popen(lan["a"], SPOOF, "aaaa-spoof", str(fake_port), "sec", fake_key)
        procs.append(spoof)
        _read_json_line(spoof, 20, "ready")
        # the spoofer alone: refused, naming both keys
        r = _zmesh(lan["b"], "--mesh", "sec", "--json", "status", **pinned)
        assert r.returncode == 1, r
        err = json.loads(r.stderr.strip().splitlines()[-1])
        assert err["code"] == "untrusted_broker" and real_fp in err["message"] and fake_fp in err["message"], err
        assert err["message"] == (f"refused broker aaaa-spoof at tcp://{lan['addr_a']}:{fake_port} of mesh 'sec': "
                                  f"it has key {fake_fp}, not the key {real_fp} pinned by ZMESH_SERVER_KEY")
        # beside the real broker: the pinned client joins the real one (the spoofer's id is lower)
        broker.start()
        r = _zmesh(lan["b"], "--mesh", "sec", "--json", "status", **pinned)
        assert r.returncode == 0 and json.loads(r.stdout)["broker_id"] == broker.broker_id, r.stderr
        assert "refused broker aaaa-spoof" in r.stderr
        # trust on first use: the spoofer gone, the client pins the real broker's key ...
        assert spoof.stdin is not None
        spoof.stdin.close()
        assert spoof.wait(timeout=15) == 0
        r = _zmesh(lan["b"], "--mesh", "sec", "--json", "status", **tofu)
        assert r.returncode == 0 and json.loads(r.stdout)["broker_id"] == broker.broker_id, r.stderr
        assert f"pinned mesh 'sec' to the key {real_fp}" in r.stderr
        assert hosts.read_text().splitlines()[2].startswith(f"sec {real_key}  # broker {broker.broker_id} at ")
        # ... and refuses the spoofer when it comes back and the real broker is gone
        assert broker.stop() == 0, broker.text()
        spoof = _popen(lan["a"], SPOOF, "aaaa-spoof", str(fake_port), "sec", fake_key)
        procs.append(spoof)
        _read_json_line(spoof, 20, "ready")
        r = _zmesh(lan["b"], "--mesh", "sec", "--json", "status", **tofu)
        assert r.returncode == 1, r
        err = json.loads(r.stderr.strip().splitlines()[-1])
        assert err["code"] == "untrusted_broker" and fake_fp in err["message"] and real_fp in err["message"]
        assert f"pinned on first use in {hosts} line 3; if the broker's key changed on purpose, remove that line" \
            in err["message"]
        # a client with no key pair of its own is told to set ZMESH_KEY (exit 2)
        r = _zmesh(lan["b"], "--mesh", "sec", "status", ZMESH_KNOWN_HOSTS=str(tmp_path / "other"))
        assert r.returncode == 2 and "set ZMESH_KEY" in r.stderr, r
    finally:
        _stop_all(procs)


def _line(proc: subprocess.Popen[str], want: str, events: set[str], timeout: float = 30) -> dict[str, Any]:
    """The walker's next line with ``want``; the events it printed meanwhile go to ``events``."""
    while True:
        got = _read_json_line(proc, timeout, "")
        assert "error" not in got, got
        if "event" in got:
            events.add(got["event"])
        if want in got:
            return got


@netns
def test_lan_a_broker_restarted_on_another_port_is_followed(lan: dict[str, str], tmp_path: Path) -> None:
    """Issue 17 acceptance: a broker restarted on another port is found again by its connected
    clients (Client and AsyncClient), requests and event subscriptions alike, with no action
    by the agent."""
    p1, q1, p2, q2 = _free_ports(lan["a"], 4)
    data = tmp_path / "data"
    first = NsBroker(lan["a"], data, p1, q1, "--mesh", "move")
    second = NsBroker(lan["a"], data, p2, q2, "--mesh", "move")
    procs: list[Any] = [first, second]
    logs = {mode: open(tmp_path / f"{mode}.log", "w+") for mode in ("sync", "async")}
    try:
        first.start()
        walkers = {}
        for mode in ("sync", "async"):
            walkers[mode] = subprocess.Popen(_in_ns(lan["b"], WALKER, mode, "move"), stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=logs[mode], text=True, env=_env(),
                                             cwd=REPO)
            procs.append(walkers[mode])
        events: dict[str, set[str]] = {"sync": set(), "async": set()}
        for mode, w in walkers.items():
            assert _line(w, "ready", events[mode])["ready"] == f"tcp://{lan['addr_a']}:{p1}"
            assert w.stdin is not None
            w.stdin.write(f"publish one-{mode}\n")
            w.stdin.flush()
            assert _line(w, "status", events[mode]) == {"status": first.broker_id,
                                                        "endpoint": f"tcp://{lan['addr_a']}:{p1}"}
        assert first.stop() == 0, first.text()
        second.start()  # the same data (the same broker id) on other ports
        assert second.broker_id == first.broker_id
        for mode, w in walkers.items():
            assert w.stdin is not None
            w.stdin.write(f"publish two-{mode}\n")
            w.stdin.flush()
            assert _line(w, "status", events[mode]) == {"status": second.broker_id,
                                                        "endpoint": f"tcp://{lan['addr_a']}:{p2}"}
        for mode, w in walkers.items():  # the subscriptions followed too: both see every event
            while not {"msg.one-sync", "msg.one-async", "msg.two-sync", "msg.two-async"} <= events[mode]:
                _line(w, "event", events[mode])
        for mode, w in walkers.items():
            assert w.stdin is not None
            w.stdin.close()
            assert w.wait(timeout=30) == 0
            logs[mode].seek(0)
            log_text = logs[mode].read()
            assert (f"broker of mesh 'move' moved from tcp://{lan['addr_a']}:{p1} to tcp://{lan['addr_a']}:{p2}"
                    in log_text), log_text
            assert f"event stream follows the broker to tcp://{lan['addr_a']}:{q2}" in log_text
    finally:
        _stop_all(procs)
        for f in logs.values():
            f.close()


# --------------------------------------------------------------------------- issue 18: the drain


@netns
def test_lan_a_broker_stopped_by_sigterm_withdraws_its_record(lan: dict[str, str], tmp_path: Path) -> None:
    """The graceful stop takes the record off the LAN first: a browser on another host sees it
    removed at once (not after the record's TTL), and the broker exits 0."""
    a, b = lan["a"], lan["b"]
    port, pub = _free_ports(a, 2)
    broker = NsBroker(a, tmp_path / "data", port, pub)
    watch = _popen(b, WATCH)
    procs: list[Any] = [broker, watch]
    try:
        broker.start()
        added = _read_json_line(watch, 15, "event")
        assert added["event"] == "Added" and broker.broker_id[:12] in added["name"]
        assert broker.stop() == 0, broker.text()
        removed = _read_json_line(watch, 5, "event")
        assert removed == {"event": "Removed", "name": added["name"]}
        assert "drained in" in broker.text()
    finally:
        _stop_all(procs)
