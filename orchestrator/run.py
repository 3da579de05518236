"""Connect to (or start) a config's workers and run the training, cleaning up always."""

from __future__ import annotations

import contextlib
from pathlib import Path

from orchestrator.config import Config, ConfigError
from orchestrator.local_workers import LocalWorkers
from orchestrator.trainer import Trainer
from splitnn.client import WorkerClient


@contextlib.contextmanager
def connected_workers(config: Config, local: bool, threads: int = 1, connect_timeout: float = 30.0):
    """Clients for every host of the config; with `local`, workers started here."""
    stack = contextlib.ExitStack()
    with stack:
        if local:
            data = {h: {k: str(v) for k, v in w.data.items()} for h, w in config.workers.items()}
            workers = stack.enter_context(LocalWorkers(data, threads=threads))
            addresses = workers.addresses
        else:
            addresses = {}
            for host, worker in config.workers.items():
                if worker.address is None:
                    raise ConfigError(
                        f"{config.path}: workers.{host}.address is needed without --local"
                    )
                addresses[host] = worker.address
        clients = {host: WorkerClient(host, addr) for host, addr in addresses.items()}
        for client in clients.values():
            stack.callback(client.close)
        for client in clients.values():
            client.wait_ready(connect_timeout)
        yield clients


def train(
    config: Config,
    out_dir: Path,
    local: bool,
    on_epoch=None,
    show_progress=None,
    relay=False,
    resume=None,
) -> dict:
    """Train `config` (or continue from a checkpoint), writing outputs to `out_dir`."""
    with connected_workers(config, local) as clients:
        trainer = Trainer(
            config, clients, out_dir, on_epoch=on_epoch, show_progress=show_progress, relay=relay
        )
        return trainer.run(resume=resume)
