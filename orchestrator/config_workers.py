"""The [workers] table of a config, read without torch.

`splitnn train --local` and `splitnn demo` start their workers from this table
first, so that the workers import torch while the orchestrator does, instead of
after it (splitnn.orchestrator.local_start).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from splitnn.errors import ConfigError

OWNER = "owner"
_WORKER_KEYS = {"address", "data", "server_name", "data_address"}


@dataclass
class WorkerConfig:
    """Where a host's worker listens, and the files it serves when started locally."""

    name: str
    address: str | None
    data: dict[str, Path] = field(default_factory=dict)
    server_name: str | None = None
    # Where its data port listens (splitnn-worker --data-port): the data owner's
    # worker sends it the training ops there instead of over gRPC.
    data_address: str | None = None


def unknown_fields(table: dict, allowed: set, where: str, fail) -> None:
    """fail(where.key, ...) for the first key of `table` not in `allowed`."""
    for key in table:
        if key not in allowed:
            prefix = f"{where}.{key}" if where else key
            fail(prefix, f"unknown field; expected one of {sorted(allowed)}")


def parse_workers(raw: dict, path: Path) -> dict[str, WorkerConfig]:
    """The hosts of a parsed config; data paths are relative to the config's folder."""

    def fail(where: str, message: str) -> NoReturn:
        raise ConfigError(f"{path}: {where}: {message}")

    workers_raw = raw.get("workers")
    if not isinstance(workers_raw, dict) or not workers_raw:
        fail("workers", "expected a table of hosts, e.g. [workers.alice]")
    workers = {}
    for host, entry in workers_raw.items():
        where = f"workers.{host}"
        if host == OWNER:
            fail(where, f"'{OWNER}' is reserved for the current data owner")
        if isinstance(entry, str):
            entry = {"address": entry}
        if not isinstance(entry, dict):
            fail(where, "expected a table with address and data")
        unknown_fields(entry, _WORKER_KEYS, where, fail)
        for key in ("address", "data_address"):
            value = entry.get(key)
            if value is not None and (not isinstance(value, str) or ":" not in value):
                fail(f"{where}.{key}", f"expected HOST:PORT, got {value!r}")
        address = entry.get("address")
        data = entry.get("data", {})
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            fail(f"{where}.data", "expected a table of dataset name = path")
        workers[host] = WorkerConfig(
            host,
            address,
            {k: (path.parent / v).resolve() for k, v in data.items()},
            entry.get("server_name"),
            entry.get("data_address"),
        )
    return workers


def read_toml(path: Path) -> dict:
    """A config file's TOML document; ConfigError if it is missing or not TOML."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None


def read_workers(path: str | Path) -> dict[str, WorkerConfig]:
    """The [workers] table of the config file at `path`."""
    path = Path(path)
    return parse_workers(read_toml(path), path)
