"""The Exchange data plane against raw TCP on loopback, for large tensors.

    python -m bench.dataplane [--sizes-mib 1,16,64] [--repeats 5]

One worker process holds a parameter-free segment (Identity); a Forward op sends a
float32 tensor of each size and gets the same size back. Raw TCP does the same
round trip between two processes with Python sockets (one sendall, one recv loop
each way). "protobuf" is the same Exchange with every tensor inside its messages
(SPLITNN_LIFT_MIN_BYTES past any size, in the worker and here), as before
splitnn.wire.lift. Printed: MB/s of each and the ratios, in one run, the three
round trips in turn. One torch thread in this process, as in every worker and every other
bench: with two, the assembler's copy ran on an OpenMP pool whose waiting thread
spun on the core the worker needed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time

import torch

from splitnn.model import optim as optim_specs
from splitnn.orchestrator.config_workers import WorkerConfig
from splitnn.orchestrator.local_start import LocalStart
from splitnn.transport.client import WorkerClient
from splitnn.v1 import worker_pb2
from splitnn.wire import lift
from splitnn.wire.ops import Op, OpKind

PLAIN = str(1 << 40)  # SPLITNN_LIFT_MIN_BYTES that no tensor reaches: protobuf only

_ECHO = """
import socket, sys
srv = socket.create_server(("127.0.0.1", 0)); print(srv.getsockname()[1], flush=True)
c, _ = srv.accept()
while True:
    head = c.recv(8, socket.MSG_WAITALL)
    if len(head) < 8: break
    n = int.from_bytes(head, "little"); buf = bytearray(n); view = memoryview(buf); got = 0
    while got < n: got += c.recv_into(view[got:])
    c.sendall(head); c.sendall(buf)
"""


@contextlib.contextmanager
def raw_echo():
    """A raw TCP echo process and a connection to it; yields `round(nbytes)`, the
    seconds of one round trip of `nbytes` each way (one sendall, one recv loop)."""
    echo = subprocess.Popen([sys.executable, "-c", _ECHO], stdout=subprocess.PIPE, text=True)
    try:
        port = int(echo.stdout.readline())
        with socket.create_connection(("127.0.0.1", port)) as sock:

            def round_trip(nbytes: int) -> float:
                payload, buf = bytes(nbytes), bytearray(nbytes)
                start = time.perf_counter()
                sock.sendall(nbytes.to_bytes(8, "little") + payload)
                sock.recv(8, socket.MSG_WAITALL)
                view, got = memoryview(buf), 0
                while got < nbytes:
                    got += sock.recv_into(view[got:])
                return time.perf_counter() - start

            yield round_trip
    finally:
        echo.kill()
        echo.wait()


def exchange(client: WorkerClient, run_id: str, nbytes: int, repeats: int) -> float:
    """Seconds of the median Forward round trip of a float32 tensor of `nbytes`."""
    tensor = torch.ones(nbytes // 4 // 1024, 1024)
    times = []
    for _ in range(repeats):
        head = worker_pb2.ForwardRequest(
            run_id=run_id, segments=[0], batch_id=0, mode=worker_pb2.FORWARD_MODE_EVAL
        )
        head.want_output = True
        start = time.perf_counter()
        reply = client.call(Op(OpKind.FORWARD, head, tensor))
        times.append(time.perf_counter() - start)
        assert reply.tensor.shape == tensor.shape
    return statistics.median(times)


@contextlib.contextmanager
def identity_worker(min_bytes: str | None):
    """A local worker holding an Identity segment, its lifting threshold `min_bytes`
    (None: the default); yields a client on it."""
    saved = os.environ.pop("SPLITNN_LIFT_MIN_BYTES", None)
    if min_bytes is not None:
        os.environ["SPLITNN_LIFT_MIN_BYTES"] = min_bytes
    try:
        with LocalStart({"bob": WorkerConfig("bob", None)}) as started:
            client = started.security.client_factory()("bob", started.addresses()["bob"])
            client.wait_ready(30)
            sgd = optim_specs.normalize({"name": "sgd", "lr": 0.1}, "optimizer")
            client.load_segment("dataplane", 0, [{"type": "Identity"}], sgd, None)
            yield client
            client.close()
    finally:
        os.environ.pop("SPLITNN_LIFT_MIN_BYTES", None)
        if saved is not None:
            os.environ["SPLITNN_LIFT_MIN_BYTES"] = saved


def timed(client, nbytes: int, min_bytes: int) -> float:
    """One Exchange round trip, this process framing and lifting above `min_bytes`."""
    default, lift.MIN_BYTES = lift.MIN_BYTES, min_bytes
    try:
        return exchange(client, "dataplane", nbytes, 1)
    finally:
        lift.MIN_BYTES = default


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dataplane", description=__doc__)
    p.add_argument("--sizes-mib", default="1,16,64")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes_mib.split(",")]
    with identity_worker(PLAIN) as plain, identity_worker(None) as lifted, raw_echo() as raw:
        print(
            f"{'MiB':>5} {'protobuf MB/s':>14} {'Exchange MB/s':>14} {'raw TCP MB/s':>13} "
            f"{'x protobuf':>10} {'x raw TCP':>9}"
        )
        for mib in sizes:
            nbytes = mib << 20
            timed(plain, nbytes, int(PLAIN)), timed(lifted, nbytes, lift.MIN_BYTES), raw(nbytes)
            times: dict[str, list[float]] = {"plain": [], "lifted": [], "raw": []}
            for _ in range(args.repeats):  # the three in turn, so a slow spell hits all
                times["plain"].append(timed(plain, nbytes, int(PLAIN)))
                times["lifted"].append(timed(lifted, nbytes, lift.MIN_BYTES))
                times["raw"].append(raw(nbytes))
            old, ours, tcp = (statistics.median(times[k]) for k in ("plain", "lifted", "raw"))
            old_rate, ours_rate, raw_rate = (2 * nbytes / t / 1e6 for t in (old, ours, tcp))
            print(
                f"{mib:>5} {old_rate:>14.0f} {ours_rate:>14.0f} {raw_rate:>13.0f} "
                f"{old / ours:>10.2f} {tcp / ours:>9.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
