"""bench.tunswitch, the modelled link under bench.network: packets reach the device of
their destination address after the line is free and the delay has passed, in order;
anything else is dropped. Packet sockets stand in for TUN devices (one read, one packet)."""

from __future__ import annotations

import os
import socket

import pytest

from bench import tunswitch


@pytest.fixture
def devices(monkeypatch):
    """Switch devices a (10.78.0.2) and b (10.78.0.3); yields (switch, a's far end, b's)."""
    far = {}

    def fake_tun(name: str) -> int:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        theirs.setblocking(False)
        far[name] = theirs
        fd = ours.detach()
        return fd

    monkeypatch.setattr(tunswitch, "open_tun", fake_tun)
    delay_s, bytes_per_s = 0.005, 1_000_000.0  # 5 ms, 1 MB/s: 1 ms per 1000 bytes
    switch = tunswitch.Switch({"a": "10.78.0.2", "b": "10.78.0.3"}, delay_s, bytes_per_s)
    yield switch, far["a"], far["b"]
    for fd in switch.fds.values():
        os.close(fd)
    for sock in far.values():
        sock.close()


def ipv4(dst: str, size: int, tag: int = 0) -> bytes:
    head = bytearray(20)
    head[0] = 0x45
    head[16:20] = bytes(map(int, dst.split(".")))
    return bytes(head) + bytes([tag]) * (size - 20)


def received(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(1 << 16))
        except BlockingIOError:
            return out


def test_a_packet_arrives_after_its_line_time_and_the_delay(devices):
    switch, a, b = devices
    a.send(ipv4("10.78.0.3", 1000, tag=1))
    a.send(ipv4("10.78.0.3", 1000, tag=2))
    switch.take(switch.fds["a"], now=100.0)
    # the first is on the line 1 ms, then 5 ms of delay; the second waits for the line
    switch.deliver(now=100.0059)
    assert received(b) == []
    switch.deliver(now=100.0061)
    assert [p[20] for p in received(b)] == [1]
    switch.deliver(now=100.0071)
    assert [p[20] for p in received(b)] == [2]
    assert received(a) == []


def test_each_direction_has_its_own_line(devices):
    switch, a, b = devices
    a.send(ipv4("10.78.0.3", 1000, tag=1))
    b.send(ipv4("10.78.0.2", 1000, tag=2))
    switch.take(switch.fds["a"], now=0.0)
    switch.take(switch.fds["b"], now=0.0)
    switch.deliver(now=0.0061)
    assert [p[20] for p in received(b)] == [1]
    assert [p[20] for p in received(a)] == [2]


def test_what_is_not_ipv4_to_a_known_address_is_dropped(devices):
    switch, a, b = devices
    a.send(b"\x60" + bytes(59))  # IPv6
    a.send(ipv4("10.78.0.9", 100))  # nobody behind that address
    a.send(b"\x45\x00")  # too short to be a header
    switch.take(switch.fds["a"], now=0.0)
    assert switch.queue == []
    switch.deliver(now=1.0)
    assert received(a) == [] and received(b) == []


def test_the_network_table_gives_round_trips_and_ratios_to_torch_rpc():
    from bench.network import RPC, format_table

    rows = [
        {"job": "seed", "mode": RPC, "ms": 70.0, "samples_per_s": 228.6},
        {"job": "seed", "mode": "splitnn, chain", "ms": 35.0, "samples_per_s": 457.1},
    ]
    table = format_table(rows, delay_ms=5.0, mbit=1000.0, kind="tun").splitlines()
    assert table[0] == "link (tun): 5 ms each way, 1000 Mbit/s (round trip 10 ms)"
    assert table[2].split()[-3:] == ["7.00", "229", "1.00"]
    assert table[3].split()[-3:] == ["3.50", "457", "2.00"]
