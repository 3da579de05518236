"""A userspace IP switch between TUN devices that models a network link: every packet
waits for the line (a bandwidth cap per direction between two hosts), then the one-way
delay. Unlike bench.netproxy it sits below TCP, so it carries every connection any
program opens, on any port: torch.distributed.rpc's TensorPipe, which listens on
ports it picks itself after its rendezvous, goes through it as splitnn does.

    python -m bench.tunswitch --delay-ms 5 --mbit 1000 --device NAME=10.78.0.2 [...]

Each --device creates a TUN device NAME (IFF_TUN, no packet info) and says which
IPv4 address lives behind it. The switch prints `ready` once every device exists;
the caller (bench.tunlink) then moves them into their network namespaces and
gives them their addresses. An IPv4 packet read from one device is written to the
device of its destination address at its time; anything else (IPv6, an unknown
address) is dropped. Runs until killed; the devices go with it.
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import os
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_PACKET = 1 << 16


def open_tun(name: str) -> int:
    """A new TUN device `name`; its file descriptor (the device lives while it is open)."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


class Switch:
    """Packets in from every device, out to their destination's at their arrival time."""

    def __init__(self, devices: dict[str, str], delay_s: float, bytes_per_s: float):
        self.delay_s = delay_s
        self.bytes_per_s = bytes_per_s
        self.fds = {name: open_tun(name) for name in devices}
        self.by_address = {bytes(map(int, a.split("."))): self.fds[n] for n, a in devices.items()}
        self.free_at: dict[tuple[int, int], float] = {}  # (from fd, to fd): line free at
        self.queue: list[tuple[float, int, int, bytes]] = []  # (due, order, fd, packet)
        self.order = 0

    def take(self, fd: int, now: float) -> None:
        """Read what `fd` has; queue each IPv4 packet for its destination."""
        while True:
            try:
                packet = os.read(fd, MAX_PACKET)
            except BlockingIOError:
                return
            if len(packet) < 20 or packet[0] >> 4 != 4:
                continue
            out = self.by_address.get(packet[16:20])
            if out is None:
                continue
            line = (fd, out)
            start = max(now, self.free_at.get(line, 0.0))
            self.free_at[line] = start + len(packet) / self.bytes_per_s
            self.order += 1
            heapq.heappush(self.queue, (self.free_at[line] + self.delay_s, self.order, out, packet))

    def deliver(self, now: float) -> None:
        while self.queue and self.queue[0][0] <= now:
            _, _, fd, packet = heapq.heappop(self.queue)
            try:
                os.write(fd, packet)
            except (BlockingIOError, OSError):  # the device is full or down: a lost packet
                pass

    def run(self) -> None:
        fds = list(self.fds.values())
        while True:
            now = time.monotonic()
            self.deliver(now)
            timeout = max(0.0, self.queue[0][0] - now) if self.queue else 1.0
            ready, _, _ = select.select(fds, [], [], timeout)
            now = time.monotonic()
            for fd in ready:
                self.take(fd, now)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tunswitch", description=__doc__)
    p.add_argument("--delay-ms", type=float, required=True, help="one-way delay")
    p.add_argument("--mbit", type=float, required=True, help="rate cap per direction")
    p.add_argument("--device", action="append", required=True, help="NAME=IPV4")
    args = p.parse_args(argv)
    devices = dict(d.split("=", 1) for d in args.device)
    switch = Switch(devices, args.delay_ms / 1000, args.mbit * 1e6 / 8)
    print("ready", flush=True)
    switch.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
