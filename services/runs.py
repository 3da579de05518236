"""The runs a worker serves: who owns each, who may send its ops, when it was last
used, and what it holds against the caps.

A run is created by the first LoadSegment that names it and belongs to the
identity that sent it. Every use renews its lease; a run unused for longer than
the lease is dropped whole (its orchestrator died or forgot it), so that killed
runs leave nothing behind.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple

DEFAULT_LEASE_SECONDS = 600.0


class PeerAddress(NamedTuple):
    """Where chain forwarding may dial a host of a run, as its orchestrator said."""

    address: str
    server_name: str = ""  # the name its TLS certificate carries, when not the host's
    data_address: str = ""  # its data port, if it serves one


@dataclass
class Run:
    """One run on this worker."""

    run_id: str
    owner: str | None  # the identity that created it (None: no identities here)
    callers: frozenset[str] = frozenset()  # peers that may send its ops
    # host -> where chain forwarding may dial it
    peers: dict[str, PeerAddress] = field(default_factory=dict)
    last_used: float = field(default_factory=time.monotonic)


class Runs:
    """Every run this worker serves, by id; thread-safe."""

    def __init__(self, lease_seconds: float = DEFAULT_LEASE_SECONDS):
        self.lease_seconds = lease_seconds
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()

    def get(self, run_id: str) -> Run | None:
        """The run, if this worker serves it."""
        return self._runs.get(run_id)

    def owner(self, run_id: str) -> str | None:
        """The identity that created the run (None also when there is no such run)."""
        run = self._runs.get(run_id)
        return None if run is None else run.owner

    def claim(self, run_id: str, owner: str | None, callers, peers=None) -> Run:
        """The run a load names, created for `owner` if new; its callers become
        `callers` and its peers' addresses `peers` (host -> PeerAddress's fields).
        (Whether `owner` may use an existing run is access's to check.)"""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                run = self._runs[run_id] = Run(run_id, owner)
            run.callers = frozenset(callers)
            run.peers = {host: PeerAddress(*where) for host, where in (peers or {}).items()}
            run.last_used = time.monotonic()
            return run

    def touch(self, run_id: str) -> None:
        """Renew a run's lease: it was just used."""
        run = self._runs.get(run_id)
        if run is not None:
            run.last_used = time.monotonic()

    def forget(self, run_id: str) -> None:
        """The run is gone (its last segment dropped, or its lease lapsed)."""
        with self._lock:
            self._runs.pop(run_id, None)

    def lapsed(self, now: float | None = None) -> list[str]:
        """Ids of the runs unused for longer than the lease."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return [r.run_id for r in self._runs.values() if now - r.last_used > self.lease_seconds]

    def owned_by(self, owner: str | None) -> set[str]:
        """Ids of the runs this identity created."""
        with self._lock:
            return {r.run_id for r in self._runs.values() if r.owner == owner}
