"""`splitnn-worker`: serve the segments of a host and its own datasets over gRPC."""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

from splitnn import logs
from splitnn.data.datasets import TOY_NAME, builtin, load_npz
from splitnn.errors import SplitnnError
from splitnn.lifetime import exit_with_parent
from splitnn.memory import keep_freed_memory
from splitnn.model import modules as operator_modules
from splitnn.model.devices import resolve_device
from splitnn.model.warm import warm_up_in_background
from splitnn.security.access import DEFAULT_ORCHESTRATORS, AccessPolicy
from splitnn.security.policy import Security, is_loopback
from splitnn.services.chain_forward import PeerPool
from splitnn.services.data_port import DataPortServer
from splitnn.services.driver import Driver
from splitnn.services.guard import (
    DEFAULT_CALLS_PER_IDENTITY,
    DEFAULT_IDLE_SECONDS,
    CallSlots,
    IdleWatch,
)
from splitnn.services.health import add_health_and_reflection, add_health_only
from splitnn.services.registration import add_worker_service
from splitnn.services.segment_host import Limits, SegmentHost
from splitnn.services.servicer import WorkerServicer
from splitnn.transport import busy_poll
from splitnn.transport.aio_client import AsyncExchangeClient
from splitnn.transport.channels import create_server
from splitnn.transport.data_client import AsyncDataClient, DataClient
from splitnn.wire import codec

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
        "--data-dir",
        metavar="DIR",
        help="serve every DIR/NAME.npz as dataset NAME (a mounted data volume; may be empty)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: several workers sharing a machine collapse otherwise)",
    )
    p.add_argument(
        "--busy-poll-us",
        type=int,
        default=int(busy_poll.DEFAULT_SPIN_SECONDS * 1e6),
        metavar="US",
        help="driving a chain, poll this long for a peer's answer before sleeping "
        "(default %(default)s; 0: never poll busily)",
    )
    p.add_argument(
        "--orchestrator",
        action="append",
        metavar="NAME",
        help="an identity that may run training here (load, export, drop, drive, status); "
        "repeatable; default: orchestrator. Other identities are peers: they may only send "
        "the ops of runs that name them",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="where segments compute: cpu (default), cuda, cuda:N, or auto (CUDA if present)",
    )
    p.add_argument(
        "--precision",
        choices=("float32", "bfloat16"),
        default="float32",
        help="bfloat16: run the segments' forward under autocast (not exact; what leaves "
        "this host stays float32)",
    )
    p.add_argument(
        "--module",
        action="append",
        default=[],
        metavar="NAME=PACKAGE.MODULE:FACTORY",
        help="offer a module of code installed here, built by FACTORY(**args) for specs "
        '{ type = "Module", name = "NAME", ... }; repeatable (nothing is ever imported '
        "from the network)",
    )
    p.add_argument(
        "--health-port",
        type=int,
        metavar="PORT",
        help="also serve grpc.health.v1, and nothing else, in plaintext on this port of "
        "the --listen host (0: any free), for probes that cannot speak TLS",
    )
    p.add_argument(
        "--data-port",
        type=int,
        metavar="PORT",
        help="also serve the training ops (Exchange) in frames over TCP on this port of the "
        "--listen host (0: any free), with the same TLS, tokens and policy: a driving "
        "worker told of it (Stage.data_address) sends its ops there, faster than gRPC",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics over HTTP (plaintext, /metrics) on this port of the "
        "--listen host (0: any free): ops, latency, bytes, segments, pending batches, retries",
    )
    p.add_argument("--max-segments", type=int, default=64)
    p.add_argument(
        "--max-parameters",
        type=int,
        default=Limits.max_parameters,
        help="parameters of all hosted segments together",
    )
    p.add_argument("--max-pending", type=int, default=64, help="batches awaiting Backward")
    p.add_argument("--max-tensor-mb", type=int, default=1024)
    p.add_argument("--max-rows", type=int, default=Limits.max_rows, help="rows one op may name")
    p.add_argument(
        "--run-lease-s",
        type=float,
        default=Limits.lease_seconds,
        help="drop a run unused this long (its orchestrator died); default %(default)s",
    )
    p.add_argument(
        "--idle-timeout-s",
        type=float,
        default=DEFAULT_IDLE_SECONDS,
        help="cancel a stream whose caller sent nothing for this long; default %(default)s",
    )
    p.add_argument(
        "--max-calls-per-identity",
        type=int,
        default=DEFAULT_CALLS_PER_IDENTITY,
        help="calls one identity may hold open at once; default %(default)s",
    )
    p.add_argument(
        "--handler-threads",
        type=int,
        default=64,
        help="threads serving calls (each open stream holds one); default %(default)s",
    )
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default="text",
        help="json: one JSON object a line (time, level, worker, run, step, message), "
        "for a log collector; default text",
    )
    p.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when the process that started this worker dies (used by --local)",
    )
    sec = p.add_argument_group(
        "security",
        "A worker needs TLS, a token, or both; plaintext without a token only with --insecure.",
    )
    sec.add_argument("--tls-cert", metavar="PEM", help="this worker's certificate (server+client)")
    sec.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    sec.add_argument(
        "--tls-ca",
        metavar="PEM",
        help="CA certificate: callers must present a certificate it signed (mutual TLS), "
        "and peers this worker calls must too",
    )
    sec.add_argument(
        "--token-file",
        metavar="PATH",
        help="per-identity tokens, one 'NAME TOKEN' (or 'NAME sha256:HEX') line each: "
        "calls without a listed token are refused; this worker sends its own --name's "
        "token to its peers (a file of one bare token: a token shared by all)",
    )
    sec.add_argument(
        "--insecure",
        action="store_true",
        help="allow plaintext without a token (anyone who reaches the port may use the worker)",
    )
    args = p.parse_args(argv)
    if args.busy_poll_us < 0:
        p.error(f"--busy-poll-us must be at least 0, not {args.busy_poll_us}")
    if args.handler_threads <= args.max_calls_per_identity:
        p.error("--handler-threads must exceed --max-calls-per-identity (room for others)")
    for name in ("run_lease_s", "idle_timeout_s"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    args.orchestrator = args.orchestrator or list(DEFAULT_ORCHESTRATORS)
    return args


def load_datasets(specs: list[str], data_dir: str | None = None) -> dict:
    """The worker's datasets: the built-in toy set, every NAME=PATH given, and every
    NAME.npz in `data_dir`."""
    datasets = {TOY_NAME: builtin(TOY_NAME)}
    named = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SplitnnError(f"--data expects NAME=PATH, got {spec!r}")
        named.append((name, path))
    if data_dir is not None:
        directory = Path(data_dir)
        if not directory.is_dir():
            raise SplitnnError(f"--data-dir {data_dir}: no such directory")
        named += [(path.stem, str(path)) for path in sorted(directory.glob("*.npz"))]
    for name, path in named:
        if name in datasets:
            raise SplitnnError(f"dataset {name!r} is given twice (or is the built-in one)")
        datasets[name] = load_npz(name, path)
    return datasets


def worker_security(args: argparse.Namespace) -> Security | None:
    """The worker's security from its flags; refuses to run unprotected unless --insecure."""
    cert, key, ca = (getattr(args, f, None) for f in ("tls_cert", "tls_key", "tls_ca"))
    token_file = getattr(args, "token_file", None)
    if (cert or key or ca) and not (cert and key and ca):
        raise SplitnnError("--tls-cert, --tls-key and --tls-ca go together (mutual TLS)")
    security = None
    if ca or token_file:
        security = Security(
            ca=ca and Path(ca),
            cert=cert and Path(cert),
            key=key and Path(key),
            token_file=token_file and Path(token_file),
            identity=args.name,
        )
        security.check_files()
    elif not getattr(args, "insecure", False):
        if not is_loopback(args.listen):
            raise SplitnnError(
                f"refusing to serve {args.listen} without protection: give --tls-cert/"
                "--tls-key/--tls-ca (see `splitnn certs`) and/or --token-file, or --insecure "
                "to accept plaintext calls from anyone who reaches the port"
            )
        # Loopback only: no other machine can reach it (how `--local` runs workers).
        log.info("plaintext on loopback %s (only this machine can connect)", args.listen)
    if not is_loopback(args.listen) and (security is None or not security.tls):
        if security is None:
            log.warning(
                "WARNING: --insecure on %s, which is not loopback: no TLS, no token; anyone "
                "who reaches this port can load, read and run segments and read this "
                "host's data through them",
                args.listen,
            )
        else:
            log.warning(
                "WARNING: listening on %s without TLS: the token and all tensors cross the "
                "network in plaintext",
                args.listen,
            )
    return security


@dataclass
class Worker:
    """A worker's parts: its host, its bound server (started by main) and its driver."""

    host: SegmentHost
    server: grpc.Server
    port: int
    driver: Driver
    peers: PeerPool
    health_server: grpc.Server | None = None  # --health-port: plaintext health alone
    health_port: int | None = None
    metrics_server: object | None = None  # --metrics-port: Prometheus over HTTP
    metrics_port: int | None = None
    data_server: DataPortServer | None = None  # --data-port: Exchange in frames


def build(args: argparse.Namespace) -> Worker:
    """Create the host, the servicer and the bound server (not started)."""
    security = worker_security(args)
    limits = Limits(
        max_segments=args.max_segments,
        max_parameters=args.max_parameters,
        max_pending_batches=args.max_pending,
        max_tensor_bytes=args.max_tensor_mb << 20,
        max_rows=args.max_rows,
        lease_seconds=args.run_lease_s,
    )
    device = resolve_device(getattr(args, "device", "cpu"))
    for spec in getattr(args, "module", []):
        operator_modules.offer(spec)
    autocast = torch.bfloat16 if getattr(args, "precision", "float32") == "bfloat16" else None
    host = SegmentHost(
        args.name,
        load_datasets(args.data, getattr(args, "data_dir", None)),
        limits,
        device,
        autocast,
    )
    threads = args.handler_threads
    if security is None:
        server, port = create_server(args.listen, max_workers=threads)
        peer_factory = chain_factory = data_factory = chain_data_factory = None  # plain
        access = AccessPolicy(args.orchestrator)
    else:
        server, port = create_server(
            args.listen,
            max_workers=threads,
            interceptors=security.server_interceptors(),
            credentials=security.server_credentials(),
        )
        access = AccessPolicy(args.orchestrator, tls=security.tls, tokens=security.tokens)
        # Driving the chain, this worker dials its peers with its own certificate and
        # token, expecting the peer called NAME to present a certificate for NAME.
        peer_factory = security.client_factory(AsyncExchangeClient)
        chain_factory = security.client_factory()
        # The data ports: the same certificate and token, in the TLS of the socket.
        credentials = {"ssl_context": security.ssl_client_context(), "token": security.token}
        data_factory = functools.partial(AsyncDataClient, **credentials)
        chain_data_factory = functools.partial(DataClient, **credentials)

    driver = Driver(
        host,
        client_factory=peer_factory,
        spin_seconds=args.busy_poll_us / 1e6,
        data_client_factory=data_factory,
    )
    servicer = WorkerServicer(
        host,
        codec.DEFAULT_CHUNK_BYTES,
        driver=driver,
        access=access,
        slots=CallSlots(args.max_calls_per_identity),
        idle=IdleWatch(args.idle_timeout_s),
        peers=PeerPool(chain_factory, chain_data_factory),
    )
    add_worker_service(servicer, server)
    health = add_health_and_reflection(server)  # grpc.health.v1 + reflection, for probes
    worker = Worker(host, server, port, driver, servicer.peers)
    if getattr(args, "health_port", None) is not None:
        worker.health_server, worker.health_port = create_server(
            f"{bind_host(args)}:{args.health_port}", max_workers=2
        )
        add_health_only(health, worker.health_server)
    if getattr(args, "data_port", None) is not None:
        worker.data_server = DataPortServer(
            servicer,
            bind_host(args),
            args.data_port,
            ssl_context=security.ssl_server_context() if security is not None else None,
            max_connections=threads,
        )
    if getattr(args, "metrics_port", None) is not None:
        from splitnn.services.metrics import WorkerMetrics  # prometheus-client, only if asked

        servicer.observe(WorkerMetrics(servicer))
        worker.metrics_server, worker.metrics_port = servicer.metrics.serve(
            bind_host(args).strip("[]"), args.metrics_port
        )
    return worker


def bind_host(args: argparse.Namespace) -> str:
    """The host part of --listen, where the health and metrics ports listen too."""
    return args.listen.rsplit(":", 1)[0]


def start_lease_keeper(host: SegmentHost) -> threading.Thread:
    """A thread that drops the runs whose lease lapsed, a few times per lease."""
    period = max(0.05, min(30.0, host.limits.lease_seconds / 4))

    def keep() -> None:
        while True:
            time.sleep(period)
            for run_id in host.drop_lapsed_runs():
                log.warning(
                    "run %s unused for %.0fs: dropped",
                    run_id,
                    host.limits.lease_seconds,
                    extra={"run": run_id},
                )

    thread = threading.Thread(target=keep, name="lease-keeper", daemon=True)
    thread.start()
    return thread


def main(argv=None) -> int:
    """Entry point: serve until SIGTERM or Ctrl-C."""
    args = parse_args(argv)
    if args.exit_with_parent:
        exit_with_parent()
    logs.configure(args.log_format, args.log_level, worker=args.name)
    keep_freed_memory()
    # gRPC hands every message between its threads; with the default 5 ms GIL switch
    # interval a woken thread can wait that long for its turn.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        try:
            torch.set_num_interop_threads(args.threads)
        except RuntimeError:  # set once per process: main() run again in one (tests)
            pass
    try:
        worker = build(args)
    except (SplitnnError, OSError) as err:
        print(f"splitnn-worker: {err}", file=sys.stderr)
        return 2
    # Everything loaded so far (torch, the datasets) lives as long as the process:
    # keep the garbage collector from walking it again and again on the hot path.
    gc.collect()
    gc.freeze()
    worker.server.start()
    if worker.health_server is not None:
        worker.health_server.start()
    start_lease_keeper(worker.host)
    host = bind_host(args)
    where = "" if worker.host.device.type == "cpu" else f" (device {worker.host.device})"
    say = functools.partial(logs.announce, log_format=args.log_format, worker=args.name)
    if worker.data_server is not None:  # before "listening": local starts read it first
        worker.data_server.start()
        say(f"splitnn-worker {args.name} data port on {host}:{worker.data_server.port}")
    say(f"splitnn-worker {args.name} listening on {host}:{worker.port}{where}")
    if worker.health_port is not None:
        say(f"splitnn-worker {args.name} health on {host}:{worker.health_port}")
    if worker.metrics_port is not None:
        say(f"splitnn-worker {args.name} metrics on http://{host}:{worker.metrics_port}/metrics")
    warm_up_in_background()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    # The streams this worker holds open to its peers would keep each peer's own
    # shutdown waiting for its grace period: close them first.
    worker.driver.close()
    worker.peers.close()
    if worker.data_server is not None:
        worker.data_server.close()
    if worker.health_server is not None:
        worker.health_server.stop(grace=0)
    if worker.metrics_server is not None:
        worker.metrics_server.shutdown()
    worker.server.stop(grace=1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
