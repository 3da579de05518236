"""A userspace TCP proxy that models a network link: a one-way delay and a bandwidth
cap in each direction (tc/netem is not available on these machines).

    python -m bench.netproxy --to 127.0.0.1:50051 [--to ...] --delay-ms 5 --mbit 1000

Each --to gets a listener on a free loopback port; the proxy prints one line
`proxy 127.0.0.1:LISTEN -> TARGET` per target, then serves until killed. Bytes are
read as they come, queued with the time they would reach the far end of a link of
that rate and delay (a chunk is sent once the link is free, takes its size over
the rate, then the delay), and written then. TCP_NODELAY on both sides, so the
proxy adds no batching of its own.
"""

from __future__ import annotations

import argparse
import queue
import socket
import sys
import threading
import time

CHUNK = 64 * 1024


class Link:
    """One direction of one connection: its own rate, delay and time the line is free."""

    def __init__(self, delay_s: float, bytes_per_s: float):
        self.delay_s = delay_s
        self.bytes_per_s = bytes_per_s
        self.free_at = 0.0

    def arrival(self, now: float, size: int) -> float:
        """When `size` bytes read at `now` reach the far end."""
        start = max(now, self.free_at)
        self.free_at = start + size / self.bytes_per_s
        return self.free_at + self.delay_s


def _pump(src: socket.socket, dst: socket.socket, link: Link) -> None:
    """Copy src to dst through `link`: a reader queues chunks with their arrival times,
    a writer sends each at its time."""
    chunks: queue.SimpleQueue = queue.SimpleQueue()

    def write() -> None:
        try:
            while True:
                due, data = chunks.get()
                if data is None:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _shut(dst)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        while True:
            data = src.recv(CHUNK)
            if not data:
                break
            chunks.put((link.arrival(time.monotonic(), len(data)), data))
    except OSError:
        pass
    chunks.put((0.0, None))


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _serve(listener: socket.socket, target: tuple[str, int], delay_s: float, rate: float) -> None:
    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection(target)
        except OSError:
            client.close()
            continue
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(a, b, Link(delay_s, rate)), daemon=True).start()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.netproxy", description=__doc__)
    p.add_argument("--to", action="append", required=True, metavar="HOST:PORT")
    p.add_argument("--delay-ms", type=float, default=5.0, help="one-way delay (default 5)")
    p.add_argument("--mbit", type=float, default=1000.0, help="rate, Mbit/s (default 1000)")
    args = p.parse_args(argv)
    for target in args.to:
        host, port = target.rsplit(":", 1)
        listener = socket.create_server(("127.0.0.1", 0))
        listener.listen(64)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        rate = args.mbit * 1e6 / 8
        threading.Thread(
            target=_serve,
            args=(listener, (host, int(port)), args.delay_ms / 1000, rate),
            daemon=True,
        ).start()
        print(f"proxy {address} -> {target}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
