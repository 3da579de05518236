"""Connect to (or start) a config's workers and run the training, cleaning up always."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path

from splitnn.errors import ConfigError, WorkerError
from splitnn.orchestrator.cli_health import wait_healthy
from splitnn.orchestrator.config import Config
from splitnn.orchestrator.local_workers import LocalWorkers
from splitnn.orchestrator.trainer import Trainer
from splitnn.security.identity import SHARED
from splitnn.security.policy import Security
from splitnn.transport.client import WorkerClient


def _token_file(stack: contextlib.ExitStack, security: Security) -> Path | None:
    """A file holding the token for local workers (the given one, or a private temp file)."""
    if not security.token or security.token_file is not None:
        return security.token_file
    return _private_file(stack, "token", security.token + "\n")


def _private_file(stack: contextlib.ExitStack, name: str, text: str) -> Path:
    """A file only this user can read, in a temp folder removed when `stack` closes."""
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="splitnn-")))
    path = tmp / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def _run_tokens(stack: contextlib.ExitStack, hosts: list[str]) -> Security:
    """Fresh per-identity tokens for the orchestrator and each local worker, in a file
    only this user can read, removed when the run ends."""
    lines = "".join(f"{name} {secrets.token_hex(16)}\n" for name in dict.fromkeys([SHARED, *hosts]))
    return Security(token_file=_private_file(stack, "tokens", lines), identity=SHARED)


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
):
    """Clients for every host of the config; with `local`, workers started here.

    With `security`, every client uses its TLS credentials and/or token, and the
    worker we call NAME must present a certificate for NAME (or for the entry's
    `server_name`). Local workers are then started with matching flags, each with
    its own certificate (HOST.pem / HOST.key from `security.host_cert_dir`). Local
    workers without `security` get tokens of their own for this run (a private file,
    gone afterwards): loopback is open to every process of the machine, and with
    identities the access policy holds between the local workers too.
    """
    stack = contextlib.ExitStack()
    with stack:
        server_names = {h: w.server_name for h, w in config.workers.items()}
        if local and security is None:
            security = _run_tokens(stack, list(config.workers))
        if local:
            data = {h: {k: str(v) for k, v in w.data.items()} for h, w in config.workers.items()}
            extra_args = {}
            if security is not None:
                token_file = _token_file(stack, security)
                extra_args = {h: security.worker_args(h, token_file) for h in data}
                server_names = {}  # local workers present their own host's certificate
            workers = stack.enter_context(
                LocalWorkers(data, threads=threads, extra_args=extra_args)
            )
            addresses = workers.addresses
        else:
            addresses = {}
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
        for client in clients.values():
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
) -> dict:
    """Train `config` (or continue from a checkpoint), writing outputs to `out_dir`."""
    with connected_workers(config, local, security=security) as clients:
        trainer = Trainer(
            config, clients, out_dir, on_epoch=on_epoch, show_progress=show_progress, relay=relay
        )
        return trainer.run(resume=resume)
