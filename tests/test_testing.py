"""The test harness itself (zmesh.testing): a port picked free can be taken by another
process before the broker binds it; the harness must pick again instead of failing the
test that only wanted a broker (CI once failed that way: a client's ephemeral port)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from zmesh.testing import BrokerProcess, _ephemeral_range, free_port, ping


def _hold(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", port))
    s.listen(1)
    return s


def test_a_picked_port_taken_before_the_start_is_picked_again(tmp_path: Path) -> None:
    b = BrokerProcess(tmp_path / "data")
    taken = b.port
    squatter = _hold(taken)  # someone else binds it between the pick and the start
    try:
        b.start()
        try:
            assert b.port != taken
            assert ping(b.endpoint) is not None
            assert "Address already in use" in b.log()  # the first try did fail on it
        finally:
            assert b.stop() == 0
    finally:
        squatter.close()


def test_a_port_the_caller_gave_is_not_changed(tmp_path: Path) -> None:
    port, pub = free_port(), free_port()
    squatter = _hold(port)
    try:
        b = BrokerProcess(tmp_path / "data", port=port, pub_port=pub)
        with pytest.raises(RuntimeError, match="Address already in use"):
            b.start()
        assert b.port == port
        assert b.proc is not None and b.proc.poll() is not None
    finally:
        squatter.close()


def test_half_given_ports_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both"):
        BrokerProcess(tmp_path / "data", port=free_port())


def test_free_ports_stay_out_of_the_ephemeral_range_when_there_is_room() -> None:
    low, high = _ephemeral_range()
    if low <= 20000:
        pytest.fail(f"this machine's ephemeral range {low}-{high} leaves no room below it; "
                    "the harness falls back to kernel-picked ports")
    ports = {free_port() for _ in range(50)}
    assert all(p < low for p in ports), sorted(ports)
    assert len(ports) > 1  # picked, not one constant
