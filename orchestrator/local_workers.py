"""Start a config's workers as local processes on free ports, and stop them again.

Each worker binds port 0 and prints the port it got, so no port is guessed.
Workers are stopped by their own process ids, on success, error or Ctrl-C.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from splitnn.errors import LaunchError
from splitnn.orchestrator.forked_workers import ForkedProcess, ForkServer, can_fork

_LISTENING = re.compile(r"splitnn-worker \S+ listening on (\S+)")
_DATA_PORT = re.compile(r"splitnn-worker \S+ data port on (\S+)")


def data_port_wanted() -> bool:
    """Whether local workers serve a data port (SPLITNN_DATA_PORT=0: gRPC alone)."""
    return os.environ.get("SPLITNN_DATA_PORT", "1") != "0"


@dataclass
class LocalWorkers:
    """A set of worker processes on loopback; use as a context manager."""

    data: dict[str, dict[str, str]]  # host -> dataset name -> path
    threads: int = 1
    extra_args: dict[str, list[str]] = field(default_factory=dict)
    start_timeout: float = 60.0
    fork: bool = field(default_factory=can_fork)  # fork from one process (forked_workers)
    # A command each host's worker runs under (e.g. `ip netns exec NS`); such a worker is
    # a process of its own, never forked.
    prefix: dict[str, list[str]] = field(default_factory=dict)
    # Each worker also serves its data port (--data-port 0), which drivers then use.
    data_port: bool = field(default_factory=data_port_wanted)

    def __post_init__(self):
        self.processes: dict[str, subprocess.Popen | ForkedProcess] = {}
        self._forks: ForkServer | None = None
        self.addresses: dict[str, str] = {}
        self.data_addresses: dict[str, str] = {}  # host -> its data port, when it has one
        self.logs: dict[str, list[str]] = {}

    def __enter__(self) -> LocalWorkers:
        self.start()
        self.wait_started()
        return self

    def start(self) -> None:
        """Launch every worker process (without waiting for them to listen)."""
        try:
            for host in self.data:
                if host not in self.processes:
                    self._start(host)
        except BaseException:
            self.stop()
            raise

    def wait_started(self) -> dict[str, str]:
        """Wait until every worker listens; its address by host."""
        try:
            for host in self.data:
                if host not in self.addresses:
                    self._wait(host)
        except BaseException:
            self.stop()
            raise
        return self.addresses

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start(self, host: str) -> None:
        args = [
            "--name",
            host,
            "--listen",
            "127.0.0.1:0",
            "--threads",
            str(self.threads),
            "--log-level",
            "WARNING",
            "--exit-with-parent",
        ]
        if self.data_port:
            args += ["--data-port", "0"]
        if not self.extra_args.get(host):
            args.append("--insecure")  # loopback only; secured runs pass their own flags
        for name, path in self.data[host].items():
            args += ["--data", f"{name}={path}"]
        args += self.extra_args.get(host, [])
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.logs[host] = []
        if self.fork and not self.prefix.get(host):
            if self._forks is None:
                self._forks = ForkServer()
            self.processes[host] = self._forks.spawn(args, env)
            return
        self.processes[host] = subprocess.Popen(
            [*self.prefix.get(host, []), sys.executable, "-m", "splitnn.services.server", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,  # Ctrl-C in the terminal goes to us; we stop them.
        )

    def _wait(self, host: str) -> None:
        process = self.processes[host]
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                if process.poll() is not None:
                    break
                continue
            self.logs[host].append(line.rstrip())
            data_port = _DATA_PORT.search(line)
            if data_port:
                self.data_addresses[host] = data_port.group(1)
            match = _LISTENING.search(line)
            if match:
                self.addresses[host] = match.group(1)
                # Keep reading its output so the pipe never fills up.
                threading.Thread(target=self._drain, args=(host,), daemon=True).start()
                return
        lines = self.logs[host]
        if not lines and isinstance(process, ForkedProcess):  # it was never forked
            lines = [f"(the fork server failed) {line}" for line in self._forks.last_words()]
        output = "\n".join(lines[-20:])
        raise LaunchError(f"local worker {host} did not start:\n{output}")

    def _drain(self, host: str) -> None:
        process = self.processes.get(host)
        if process is None:
            return
        for line in process.stdout:
            self.logs[host].append(line.rstrip())

    def stop(self) -> None:
        """Stop every worker started here: SIGTERM, then SIGKILL after a grace period."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        if self._forks is not None:
            self._forks.close()
            self._forks = None
