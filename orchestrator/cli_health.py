"""`splitnn health ADDRESS...`: are these workers up and serving? And `wait_healthy`.

Both ask the standard gRPC health service (`grpc.health.v1.Health/Check`) that
every worker serves, so any gRPC health probe (grpcurl, grpc_health_probe,
Kubernetes) gets the same answer. Nothing here imports torch: a container
HEALTHCHECK runs this every few seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitnn.errors import HealthError, SplitnnError
from splitnn.transport.channels import create_channel

PROG = "splitnn health"
DEFAULT_TIMEOUT = 5.0
WORKER_SERVICE = "splitnn.v1.WorkerService"
# Reconnect quickly while waiting for a worker that is still starting (gRPC's own
# backoff grows to two minutes).
_FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# Answers that waiting will not change.
_FINAL_CODES = {
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}


def _status_name(status: int) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


class _Probe:
    """One worker's channel and the last thing it said."""

    def __init__(self, name: str, address: str, credentials, options, metadata):
        self.name = name
        self.address = address
        self.metadata = tuple(metadata)
        self.channel = create_channel(address, credentials, _FAST_RECONNECT + list(options))
        self.stub = health_pb2_grpc.HealthStub(self.channel)
        self.reason = "not asked yet"
        self.final = False

    def check(self, service: str, deadline_s: float) -> bool:
        """Ask once; True when SERVING. Otherwise remember why not."""
        try:
            response = self.stub.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=max(deadline_s, 0.05),
                metadata=self.metadata,
            )
        except grpc.RpcError as err:
            code = err.code()
            details = err.details() or ""
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                self.reason = f"no answer from {self.address}"
            elif code == grpc.StatusCode.UNAVAILABLE:
                self.reason = f"unreachable at {self.address}: {details}"
            elif code == grpc.StatusCode.NOT_FOUND:
                self.reason = f"{self.address} does not report service {service!r}"
            elif code == grpc.StatusCode.UNIMPLEMENTED:
                self.reason = (
                    f"{self.address} serves no gRPC health service (not a splitnn worker?): "
                    f"{details}"
                )
            else:
                self.reason = f"{self.address} answered {code.name}: {details}"
            self.final = code in _FINAL_CODES
            return False
        if response.status == health_pb2.HealthCheckResponse.SERVING:
            self.reason = "SERVING"
            return True
        self.reason = f"{self.address} answered {_status_name(response.status)}"
        return False

    def close(self) -> None:
        self.channel.close()


def _per_worker(value, name: str, default):
    if isinstance(value, Mapping):
        return value.get(name, default)
    return default if value is None else value


def wait_healthy(
    addresses: dict[str, str],
    timeout: float = 30.0,
    credentials=None,
    *,
    service: str = "",
    channel_options=(),
    metadata=(),
    interval: float = 0.25,
) -> None:
    """Wait until every worker answers SERVING, for at most `timeout` seconds in all.

    `addresses` maps worker name to HOST:PORT. `credentials` (grpc.ChannelCredentials,
    None for plaintext) and `channel_options` may be one value for all or a dict by
    worker name. `service` "" asks about the server as a whole; "splitnn.v1.WorkerService"
    about the worker service. Raises HealthError naming every worker that is not
    healthy and why; a worker that refuses the question for good (no health service,
    unknown service, not authenticated) fails it without waiting for the timeout.
    """
    start = time.monotonic()
    deadline = start + timeout
    probes = {}
    try:
        for name, address in addresses.items():
            probes[name] = _Probe(
                name,
                address,
                _per_worker(credentials, name, None),
                _per_worker(channel_options, name, ()),
                _per_worker(metadata, name, ()),
            )
        pending = dict(probes)
        while pending:
            for name, probe in list(pending.items()):
                # A short deadline per question: one stuck worker must not use up the
                # time of the others.
                remaining = deadline - time.monotonic()
                if probe.check(service, min(remaining, 2.0)):
                    del pending[name]
            if all(p.final for p in pending.values()) and pending:
                break
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                break
            time.sleep(min(interval, remaining))
        if pending:
            problems = {n: p.reason for n, p in pending.items()}
            raise HealthError(problems, time.monotonic() - start)
    finally:
        for probe in probes.values():
            probe.close()


def check_health(
    address: str,
    timeout: float = DEFAULT_TIMEOUT,
    credentials=None,
    *,
    service: str = "",
    channel_options=(),
    metadata=(),
) -> None:
    """Wait (at most `timeout` s) until the worker at `address` answers SERVING."""
    wait_healthy(
        {address: address},
        timeout,
        credentials,
        service=service,
        channel_options=channel_options,
        metadata=metadata,
    )


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``health`` to the main CLI's subparsers."""
    p = subparsers.add_parser(
        "health",
        help="exit 0 when the workers at ADDRESS... answer SERVING (grpc.health.v1)",
        description="Ask workers' standard gRPC health service. Exit 0 when every one "
        "answers SERVING, 1 when one does not within the timeout (unreachable, not "
        "serving, or no health service).",
    )
    p.add_argument(
        "addresses", nargs="+", metavar="ADDRESS", help="HOST:PORT of a worker; several: all"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to keep trying, for all together (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "--service",
        default="",
        help=f'service to ask about: "" for the whole server (default) or {WORKER_SERVICE}',
    )
    tls = p.add_argument_group(
        "TLS", "for a worker started with --tls-cert/--tls-key/--tls-ca (mutual TLS)"
    )
    tls.add_argument(
        "--tls-dir", help="use DIR/ca.pem and DIR/orchestrator.pem/.key (as `splitnn train`)"
    )
    tls.add_argument("--tls-ca", help="CA certificate (PEM) the worker's certificate is from")
    tls.add_argument("--tls-cert", help="this client's certificate (PEM)")
    tls.add_argument("--tls-key", help="the private key of --tls-cert")
    tls.add_argument(
        "--server-name",
        help="name the worker's certificate must carry, e.g. alice (default: ADDRESS's host)",
    )
    p.set_defaults(func=run_health)
    return p


def _credentials(args):
    """(credentials, channel options) from the TLS flags; (None, ()) without them."""
    from splitnn.security.policy import Security

    security = Security.from_options(args.tls_dir, args.tls_ca, args.tls_cert, args.tls_key)
    if security is None or not security.tls:
        return None, ()
    options = security.channel_options(args.server_name) if args.server_name else []
    return security.channel_credentials(), options


def run_health(args) -> int:
    """Run ``health``: a line per worker on stdout when all are SERVING (exit 0), a line
    per unhealthy one on stderr otherwise (exit 1)."""
    what = f" ({args.service})" if args.service else ""
    try:
        credentials, options = _credentials(args)
        wait_healthy(
            {address: address for address in args.addresses},
            args.timeout,
            credentials,
            service=args.service,
            channel_options=options,
        )
    except HealthError as err:
        for address, problem in err.problems.items():
            print(
                f"{PROG}: {address}{what} is not healthy after {err.waited:.1f}s: {problem}",
                file=sys.stderr,
            )
        return 1
    except (SplitnnError, OSError) as err:  # unreadable or incomplete TLS files
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    for address in args.addresses:
        print(f"{address}{what}: SERVING")
    return 0


def main(argv=None) -> int:
    """Stand-alone entry: ``python -m splitnn.orchestrator.cli_health health ADDRESS``."""
    parser = argparse.ArgumentParser(prog="splitnn")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
