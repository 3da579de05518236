"""Local workers for one run, with the run's own tokens: started as early as possible.

`splitnn train --local` and `splitnn demo` launch their worker processes from the
config's [workers] table before the orchestrator imports torch and checks the
rest of the config, so that the workers' start-up (importing torch, warming its
optimizers) overlaps the orchestrator's instead of following it. Nothing here
imports torch.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path

from splitnn.orchestrator.config_workers import WorkerConfig, read_workers
from splitnn.orchestrator.local_workers import LocalWorkers
from splitnn.security.identity import SHARED
from splitnn.security.policy import Security


def private_file(stack: contextlib.ExitStack, name: str, text: str) -> Path:
    """A file only this user can read, in a temp folder removed when `stack` closes."""
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="splitnn-")))
    path = tmp / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def token_file(stack: contextlib.ExitStack, security: Security) -> Path | None:
    """A file holding the token for local workers (the given one, or a private temp file)."""
    if not security.token or security.token_file is not None:
        return security.token_file
    return private_file(stack, "token", security.token + "\n")


def run_tokens(stack: contextlib.ExitStack, hosts: list[str]) -> Security:
    """Fresh per-identity tokens for the orchestrator and each local worker, in a file
    only this user can read, removed when the run ends."""
    lines = "".join(f"{name} {secrets.token_hex(16)}\n" for name in dict.fromkeys([SHARED, *hosts]))
    return Security(token_file=private_file(stack, "tokens", lines), identity=SHARED)


class LocalStart:
    """A run's local workers: launched on enter, stopped (and their token files
    removed) on exit. Without `security`, every worker and the orchestrator get fresh
    tokens of their own (`self.security`): loopback is open to every process of the
    machine, and with identities the access policy holds between local workers too."""

    def __init__(
        self,
        workers: dict[str, WorkerConfig],
        security: Security | None = None,
        threads: int = 1,
        worker_args: dict[str, list[str]] | None = None,
        prefix: dict[str, list[str]] | None = None,
    ):
        self.workers = workers
        self.security = security
        self.threads = threads
        self.worker_args = worker_args or {}  # more flags per host, e.g. --device cuda
        self.prefix = prefix or {}  # a command per host to run its worker under
        self._stack = contextlib.ExitStack()
        self._local: LocalWorkers | None = None

    def __enter__(self) -> LocalStart:
        stack = self._stack
        try:
            if self.security is None:
                self.security = run_tokens(stack, list(self.workers))
            data = {h: {k: str(v) for k, v in w.data.items()} for h, w in self.workers.items()}
            file = token_file(stack, self.security)
            extra_args = {
                h: self.security.worker_args(h, file) + self.worker_args.get(h, []) for h in data
            }
            self._local = LocalWorkers(
                data, threads=self.threads, extra_args=extra_args, prefix=self.prefix
            )
            stack.callback(self._local.stop)
            self._local.start()
        except BaseException:
            stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def addresses(self) -> dict[str, str]:
        """Every worker's address, once it listens."""
        assert self._local is not None, "LocalStart used outside its with block"
        return self._local.wait_started()

    def data_addresses(self) -> dict[str, str]:
        """The data port of every worker that serves one, once it listens."""
        self.addresses()
        assert self._local is not None
        return dict(self._local.data_addresses)

    def matches(self, workers: dict[str, WorkerConfig]) -> bool:
        """Whether these workers are the ones a config asks for (same hosts and data)."""
        return {h: w.data for h, w in workers.items()} == {
            h: w.data for h, w in self.workers.items()
        }


@contextlib.contextmanager
def start_early(config_path: str | Path | None, security: Security | None = None, worker_args=()):
    """LocalStart for the workers of the config at `config_path`, launched before the
    config is checked further, each with `worker_args` too (None: nothing to start;
    yields None)."""
    if config_path is None:
        yield None
        return
    workers = read_workers(config_path)
    flags = {host: list(worker_args) for host in workers}
    with LocalStart(workers, security, worker_args=flags) as started:
        yield started
