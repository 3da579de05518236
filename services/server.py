"""`splitnn-worker`: serve the segments of a host and its own datasets over gRPC."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

import torch

from services.health import add_health_and_reflection
from services.segment_host import Limits, SegmentHost
from services.servicer import WorkerServicer
from splitnn import codec
from splitnn.channels import create_server
from splitnn.datasets import TOY_NAME, builtin, load_npz
from splitnn.errors import SplitnnError
from splitnn.v1 import worker_pb2_grpc

log = logging.getLogger("splitnn.worker")
SWITCH_INTERVAL_S = 0.0002


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options of splitnn-worker."""
    p = argparse.ArgumentParser(
        prog="splitnn-worker", description="Serve model segments and this host's own datasets."
    )
    p.add_argument("--name", required=True, help="this host's name, e.g. alice")
    p.add_argument("--listen", required=True, help="HOST:PORT to listen on (port 0: any free)")
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve PATH (.npz with arrays x and y) as dataset NAME; repeatable",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: several workers sharing a machine collapse otherwise)",
    )
    p.add_argument("--max-segments", type=int, default=64)
    p.add_argument("--max-parameters", type=int, default=Limits.max_parameters)
    p.add_argument("--max-pending", type=int, default=64, help="batches awaiting Backward")
    p.add_argument("--max-tensor-mb", type=int, default=1024)
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def load_datasets(specs: list[str]) -> dict:
    """The worker's datasets: the built-in toy set plus every NAME=PATH given."""
    datasets = {TOY_NAME: builtin(TOY_NAME)}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SplitnnError(f"--data expects NAME=PATH, got {spec!r}")
        datasets[name] = load_npz(name, path)
    return datasets


def build(args: argparse.Namespace):
    """Create the host, the servicer and the bound server (not started)."""
    limits = Limits(
        max_segments=args.max_segments,
        max_parameters=args.max_parameters,
        max_pending_batches=args.max_pending,
        max_tensor_bytes=args.max_tensor_mb << 20,
    )
    host = SegmentHost(args.name, load_datasets(args.data), limits)
    server, port = create_server(args.listen)
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(
        WorkerServicer(host, codec.DEFAULT_CHUNK_BYTES), server
    )
    add_health_and_reflection(server)  # grpc.health.v1 + reflection, for probes and grpcurl
    return host, server, port


def main(argv=None) -> int:
    """Entry point: serve until SIGTERM or Ctrl-C."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    # gRPC hands every message between its threads; with the default 5 ms GIL switch
    # interval a woken thread can wait that long for its turn.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(args.threads)
    try:
        host, server, port = build(args)
    except (SplitnnError, OSError) as err:
        print(f"splitnn-worker: {err}", file=sys.stderr)
        return 2
    server.start()
    bind_host = args.listen.rsplit(":", 1)[0]
    print(f"splitnn-worker {args.name} listening on {bind_host}:{port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
