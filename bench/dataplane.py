"""The Exchange data plane against bare gRPC and raw TCP, for large tensors.

    python -m bench.dataplane [--sizes-mib 1,16,64] [--repeats 5] [--warmup 3] [--link 5,1000]

One worker process holds a parameter-free segment (Identity); a Forward op sends a
float32 tensor of each size and gets the same size back. Beside it, the same round
trip four other ways, in turn with it in one run:
- "protobuf": the Exchange with every tensor inside its messages
  (SPLITNN_LIFT_MIN_BYTES past any size, in the worker and here), as before
  splitnn.wire.lift;
- "data port": the same op to the same worker's data port (services.data_port)
  from an AsyncDataClient on an event loop, as a driving worker sends it;
- "gRPC echo": a bare gRPC Python stream echoing bytes in 1 MiB messages
  (bench.grpc_echo; no protobuf, no splitnn), the ceiling of anything over gRPC;
- "raw TCP": two processes with Python sockets (one sendall, one recv loop each
  way), the link itself.
Each column first runs `--warmup` untimed rounds at each size: the first rounds of
a size fault in the buffers it needs, at a fraction of the link's speed (the data
port at 16 MiB: 0.22 of raw TCP with one warm-up round, 0.78 with three).
Printed: MB/s of each, the Exchange's ratios to them, and the data port's to raw TCP.

`--link D,R` puts the worker and both echoes in a network namespace behind
bench.tunlink's switch, D ms each way and R Mbit/s, this process in the machine's
own: the speed of a modelled network, not of loopback.

One torch thread in this process, as in every worker and every other bench: with
two, the assembler's copy ran on an OpenMP pool whose waiting thread spun on the
core the worker needed. This process and both echoes keep freed memory as the
workers do (splitnn.memory, see bench/__init__.py; SPLITNN_KEEP_MEMORY=0 sets it
off in all of them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import socket
import statistics
import subprocess
import sys
import time

import torch

from bench import grpc_echo, tunlink
from splitnn.model import optim as optim_specs
from splitnn.orchestrator.config_workers import WorkerConfig
from splitnn.orchestrator.local_start import LocalStart
from splitnn.transport.client import WorkerClient
from splitnn.transport.data_client import AsyncDataClient
from splitnn.v1 import worker_pb2
from splitnn.wire import lift
from splitnn.wire.ops import Op, OpKind

PLAIN = str(1 << 40)  # SPLITNN_LIFT_MIN_BYTES that no tensor reaches: protobuf only
HOST = "bob"

_ECHO = """
import socket, sys
from splitnn.memory import keep_freed_memory; keep_freed_memory()
srv = socket.create_server((sys.argv[1], 0)); print(srv.getsockname()[1], flush=True)
c, _ = srv.accept()
while True:
    head = c.recv(8, socket.MSG_WAITALL)
    if len(head) < 8: break
    n = int.from_bytes(head, "little"); buf = bytearray(n); view = memoryview(buf); got = 0
    while got < n: got += c.recv_into(view[got:])
    c.sendall(head); c.sendall(buf)
"""


@dataclasses.dataclass(frozen=True)
class Place:
    """Where the far end of every round trip runs: its address and command prefix."""

    host: str = "127.0.0.1"
    prefix: tuple[str, ...] = ()


@contextlib.contextmanager
def _process(place: Place, argv: list[str]):
    """A process at `place` that prints the port it listens on; yields the port."""
    process = subprocess.Popen([*place.prefix, *argv], stdout=subprocess.PIPE, text=True)
    try:
        yield int(process.stdout.readline())
    finally:
        process.kill()
        process.wait()


@contextlib.contextmanager
def raw_echo(place: Place):
    """A raw TCP echo process and a connection to it; yields `round(nbytes)`, the
    seconds of one round trip of `nbytes` each way (one sendall, one recv loop)."""
    argv = [sys.executable, "-c", _ECHO, place.host]
    with _process(place, argv) as port, socket.create_connection((place.host, port)) as sock:

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


@contextlib.contextmanager
def bare_grpc_echo(place: Place):
    """A bench.grpc_echo process and a stream to it; yields `round(nbytes)`."""
    argv = [sys.executable, "-m", "bench.grpc_echo", "--listen", f"{place.host}:0"]
    with _process(place, argv) as port, grpc_echo.echo_stream(f"{place.host}:{port}") as send:

        def round_trip(nbytes: int) -> float:
            payload = bytes(nbytes)
            start = time.perf_counter()
            got = send(payload)
            seconds = time.perf_counter() - start
            assert got == nbytes
            return seconds

        yield round_trip


def _forward(run_id: str, tensor: torch.Tensor) -> Op:
    head = worker_pb2.ForwardRequest(
        run_id=run_id, segments=[0], batch_id=0, mode=worker_pb2.FORWARD_MODE_EVAL
    )
    head.want_output = True
    return Op(OpKind.FORWARD, head, tensor)


def exchange(client: WorkerClient, run_id: str, nbytes: int, repeats: int) -> float:
    """Seconds of the median Forward round trip of a float32 tensor of `nbytes`."""
    tensor = torch.ones(nbytes // 4 // 1024, 1024)
    times = []
    for _ in range(repeats):
        op = _forward(run_id, tensor)
        start = time.perf_counter()
        reply = client.call(op)
        times.append(time.perf_counter() - start)
        assert reply.tensor.shape == tensor.shape
    return statistics.median(times)


@contextlib.contextmanager
def data_port(address: str, token: str | None):
    """An AsyncDataClient to a worker's data port, on an event loop of its own, as a
    driving worker holds one; yields `round(nbytes)`, one Forward's seconds."""
    loop = asyncio.new_event_loop()

    async def connect() -> AsyncDataClient:
        return AsyncDataClient(HOST, address, token=token)

    client = loop.run_until_complete(connect())
    try:

        def round_trip(nbytes: int) -> float:
            op = _forward("dataplane", torch.ones(nbytes // 4 // 1024, 1024))
            start = time.perf_counter()
            reply = loop.run_until_complete(client.call(op))
            seconds = time.perf_counter() - start
            assert reply.tensor.nbytes == nbytes
            return seconds

        yield round_trip
    finally:
        loop.run_until_complete(client.close())
        loop.close()


@contextlib.contextmanager
def identity_worker(min_bytes: str | None, place: Place = Place()):
    """A local worker at `place` holding an Identity segment, its lifting threshold
    `min_bytes` (None: the default); yields a client on it."""
    saved = os.environ.pop("SPLITNN_LIFT_MIN_BYTES", None)
    if min_bytes is not None:
        os.environ["SPLITNN_LIFT_MIN_BYTES"] = min_bytes
    where = {"worker_args": {HOST: ["--listen", f"{place.host}:0"]}}
    if place.prefix:
        where["prefix"] = {HOST: list(place.prefix)}
    try:
        with LocalStart({HOST: WorkerConfig(HOST, None)}, **where) as started:
            client = started.security.client_factory()(HOST, started.addresses()[HOST])
            client.wait_ready(30)
            sgd = optim_specs.normalize({"name": "sgd", "lr": 0.1}, "optimizer")
            client.load_segment("dataplane", 0, [{"type": "Identity"}], sgd, None)
            client.data_address = started.data_addresses().get(HOST)
            client.token = started.security.token
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


@contextlib.contextmanager
def place_for(link: str | None):
    """Loopback, or a host behind a TunLink of `link` ("D,R": ms each way, Mbit/s)."""
    if link is None:
        yield Place(), "loopback"
        return
    delay_ms, mbit = (float(v) for v in link.split(","))
    why_not = tunlink.available()
    if why_not:
        raise SystemExit(f"--link: {why_not}")
    with tunlink.TunLink([HOST], delay_ms, mbit) as tun:
        place = Place(tun.address(HOST), tuple(tun.prefix(HOST)))
        yield place, f"link of {delay_ms:g} ms each way, {mbit:g} Mbit/s"


COLUMNS = ("protobuf", "Exchange", "data port", "gRPC echo", "raw TCP")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dataplane", description=__doc__)
    p.add_argument("--sizes-mib", default="1,16,64")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--warmup", type=int, default=3, help="untimed rounds of each column at each size first"
    )
    p.add_argument("--link", default=None, help="D,R: through a modelled link (bench.tunlink)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes_mib.split(",")]
    with contextlib.ExitStack() as stack:
        place, where = stack.enter_context(place_for(args.link))
        plain = stack.enter_context(identity_worker(PLAIN, place))
        lifted = stack.enter_context(identity_worker(None, place))
        rounds = {
            "protobuf": lambda n: timed(plain, n, int(PLAIN)),
            "Exchange": lambda n: timed(lifted, n, lift.MIN_BYTES),
            "data port": stack.enter_context(data_port(lifted.data_address, lifted.token)),
            "gRPC echo": stack.enter_context(bare_grpc_echo(place)),
            "raw TCP": stack.enter_context(raw_echo(place)),
        }
        print(f"round trips on {where}; MB/s both ways together")
        print(
            f"{'MiB':>5} " + " ".join(f"{c + ' MB/s':>14}" for c in COLUMNS) + " "
            f"{'x protobuf':>10} {'x gRPC echo':>11} {'x raw TCP':>9} {'port x raw TCP':>14}"
        )
        for mib in sizes:
            nbytes = mib << 20
            for _ in range(args.warmup):  # untimed: first rounds fault their buffers in
                for run in rounds.values():
                    run(nbytes)
            times: dict[str, list[float]] = {name: [] for name in rounds}
            for _ in range(args.repeats):  # all in turn, so a slow spell hits all
                for name, run in rounds.items():
                    times[name].append(run(nbytes))
            median = {name: statistics.median(t) for name, t in times.items()}
            ours = median["Exchange"]
            rates = " ".join(f"{2 * nbytes / median[c] / 1e6:>14.0f}" for c in COLUMNS)
            print(
                f"{mib:>5} {rates} {median['protobuf'] / ours:>10.2f} "
                f"{median['gRPC echo'] / ours:>11.2f} {median['raw TCP'] / ours:>9.2f} "
                f"{median['raw TCP'] / median['data port']:>14.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
