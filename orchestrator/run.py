"""Connect to (or start) a config's workers and run the training, cleaning up always."""

from __future__ import annotations

import contextlib
from pathlib import Path

from splitnn.errors import ConfigError, WorkerError
from splitnn.orchestrator.cli_health import wait_healthy
from splitnn.orchestrator.config import Config
from splitnn.orchestrator.local_start import LocalStart
from splitnn.orchestrator.trainer import Trainer
from splitnn.security.policy import Security
from splitnn.transport.client import WorkerClient


def _wait_ready(
    client: WorkerClient, timeout: float, security: Security | None, expected: str | None
) -> None:
    try:
        client.wait_ready(timeout)
    except WorkerError as err:
        if security is None or not security.tls:
            raise
        # A TLS failure (wrong CA, or a certificate for another name) looks like a
        # worker that never answers; one call tells the reason.
        retries, client.retries = client.retries, 0
        try:
            client.status()
        except WorkerError as detail:
            raise WorkerError(
                client.name,
                "connect",
                detail.code,
                f"{detail.details} (TLS: the worker at {client.address} must present a "
                f"certificate for {expected or client.name!r} signed by {security.ca})",
            ) from None
        finally:
            client.retries = retries
        raise err from None


WORKER_SERVICE = "splitnn.v1.WorkerService"


@contextlib.contextmanager
def connected_workers(
    config: Config,
    local: bool,
    threads: int = 1,
    connect_timeout: float = 30.0,
    security: Security | None = None,
    started: LocalStart | None = None,
):
    """Clients for every host of the config; with `local`, workers started here, or
    those of `started` (launched earlier by the caller, who stops them) if they are
    the config's.

    With `security`, every client uses its TLS credentials and/or token, and the
    worker we call NAME must present a certificate for NAME (or for the entry's
    `server_name`). Local workers are then started with matching flags, each with
    its own certificate (HOST.pem / HOST.key from `security.host_cert_dir`). Local
    workers without `security` get tokens of their own for this run
    (splitnn.orchestrator.local_start).
    """
    stack = contextlib.ExitStack()
    with stack:
        server_names = {h: w.server_name for h, w in config.workers.items()}
        if local:
            if started is None or not started.matches(config.workers):
                started = stack.enter_context(LocalStart(config.workers, security, threads))
            security = started.security
            addresses = started.addresses()
            data_addresses = started.data_addresses()
            server_names = {}  # local workers present their own host's certificate
        else:
            addresses = {}
            data_addresses = {
                h: w.data_address for h, w in config.workers.items() if w.data_address
            }
            for host, worker in config.workers.items():
                if worker.address is None:
                    raise ConfigError(
                        f"{config.path}: workers.{host}.address is needed without --local"
                    )
                addresses[host] = worker.address
        if security is None:
            clients = {host: WorkerClient(host, addr) for host, addr in addresses.items()}
        else:
            factory = security.client_factory()
            clients = {
                host: factory(host, addr, server_names.get(host))
                for host, addr in addresses.items()
            }
        for host, client in clients.items():
            client.data_address = data_addresses.get(host)
            stack.callback(client.close)
        for client in clients.values():
            _wait_ready(client, connect_timeout, security, server_names.get(client.name))
        # Connected is not ready: every worker must also answer its health check.
        if security is None:
            wait_healthy(addresses, connect_timeout, service=WORKER_SERVICE)
        else:
            wait_healthy(
                addresses,
                connect_timeout,
                security.channel_credentials(),
                service=WORKER_SERVICE,
                channel_options={
                    h: security.channel_options(server_names.get(h) or h) for h in addresses
                },
                metadata=security.metadata(),
            )
        yield clients


def train(
    config: Config,
    out_dir: Path,
    local: bool,
    on_epoch=None,
    show_progress=None,
    relay=False,
    resume=None,
    security: Security | None = None,
    started: LocalStart | None = None,
    sinks=(),
) -> dict:
    """Train `config` (or continue from a checkpoint), writing outputs to `out_dir`;
    `started`: local workers already launched (see connected_workers); `sinks`: where
    metrics records go besides metrics.jsonl (orchestrator.metric_sinks)."""
    with connected_workers(config, local, security=security, started=started) as clients:
        trainer = Trainer(
            config,
            clients,
            out_dir,
            on_epoch=on_epoch,
            show_progress=show_progress,
            relay=relay,
            sinks=list(sinks),
        )
        return trainer.run(resume=resume)
