"""The hot-path multipart helpers behave as pyzmq's send_multipart/recv_multipart."""

from __future__ import annotations

import pytest
import zmq

from zmesh.transport.sockets import NOBLOCK, recv_frames, send_frames


@pytest.fixture()
def pair():
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    router.bind("inproc://sockets-test")
    dealer.connect("inproc://sockets-test")
    yield router, dealer
    router.close(0)
    dealer.close(0)
    ctx.term()


@pytest.mark.parametrize("frames", [[b"one"], [b"h", b""], [b"", b"x" * 100_000, b"z"], [b"%d" % i for i in range(20)]])
def test_frames_round_trip_whole_and_in_order(pair, frames):
    router, dealer = pair
    send_frames(dealer, frames)
    assert router.poll(5000)
    got = recv_frames(router)
    assert got[1:] == frames and all(type(f) is bytes for f in got)
    send_frames(router, got)  # identity first: routed back to the dealer
    assert dealer.poll(5000)
    assert dealer.recv_multipart() == frames


def test_messages_stay_apart_and_an_empty_queue_raises_again(pair):
    router, dealer = pair
    for i in range(3):
        dealer.send_multipart([b"m%d" % i, b"body"])
    seen = []
    for _ in range(3):
        assert router.poll(5000)
        seen.append(recv_frames(router, NOBLOCK)[1:])
    assert seen == [[b"m%d" % i, b"body"] for i in range(3)]
    with pytest.raises(zmq.Again):
        recv_frames(router, NOBLOCK)
