"""bench.dataplane's round trips on loopback: each of the four ways moves the whole
payload there and back, so its MB/s are of the bytes it claims."""

from __future__ import annotations

import pytest

from bench import dataplane, grpc_echo
from splitnn.wire import lift


@pytest.mark.slow  # starts a worker and two echo processes
def test_every_way_round_trips_the_whole_payload():
    nbytes = 3 << 20  # three chunks of 1 MiB
    with dataplane.bare_grpc_echo(dataplane.Place()) as grpc_round:
        assert grpc_round(nbytes) > 0  # asserts inside that every byte came back
    with dataplane.raw_echo(dataplane.Place()) as raw_round:
        assert raw_round(nbytes) > 0
    with dataplane.identity_worker(None) as client:
        assert dataplane.timed(client, nbytes, lift.MIN_BYTES) > 0  # shape checked inside


def test_the_echo_answers_a_payload_only_when_it_is_whole():
    requests = iter([(2).to_bytes(8, "little"), b"ab", b"cd", (1).to_bytes(8, "little"), b"e"])
    assert list(grpc_echo._echo(requests, None)) == [b"ab", b"cd", b"e"]


def test_the_echo_ends_quietly_when_its_caller_goes_mid_payload():
    requests = iter([(2).to_bytes(8, "little"), b"ab"])
    assert list(grpc_echo._echo(requests, None)) == []
