"""Local workers forked from one fork server (orchestrator.forked_workers): they serve
as workers of their own do, fail as loudly, and die with whoever started them."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from splitnn.errors import LaunchError
from splitnn.orchestrator.forked_workers import ForkedProcess, can_fork
from splitnn.orchestrator.local_workers import LocalWorkers
from splitnn.transport.client import WorkerClient

pytestmark = pytest.mark.skipif(not can_fork(), reason="workers are not forked here")


def _comm(pid: int) -> str:
    return open(f"/proc/{pid}/comm").read().strip()


def _gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":  # exited, its parent not yet reaped it
            return True
        time.sleep(0.05)
    return False


def test_forked_workers_serve_and_stop_by_their_own_pid():
    workers = LocalWorkers({"alice": {}, "bob": {}})
    with workers:
        addresses = workers.addresses
        processes = dict(workers.processes)
        assert all(isinstance(p, ForkedProcess) for p in processes.values())
        pids = {host: p.pid for host, p in processes.items()}
        assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
        assert all(_comm(pid) == "splitnn-worker" for pid in pids.values())
        for host, address in addresses.items():
            client = WorkerClient(host, address)
            try:
                client.wait_ready(10)
                assert client.status().name == host
            finally:
                client.close()
        server = workers._forks.process
    for process in processes.values():
        assert process.poll() is not None  # reported by the fork server, which reaped it
    assert all(_gone(pid) for pid in pids.values())
    assert server.poll() is not None


def test_a_killed_worker_is_reported_with_its_signal():
    with LocalWorkers({"bob": {}}) as workers:
        process = workers.processes["bob"]
        process.kill()
        assert process.wait(timeout=20) == -signal.SIGKILL
        assert process.poll() == -signal.SIGKILL


def test_a_worker_that_cannot_start_says_why(tmp_path):
    workers = LocalWorkers({"bob": {"train": str(tmp_path / "missing.npz")}}, start_timeout=60)
    with pytest.raises(LaunchError, match="missing.npz"):
        with workers:
            pass
    assert workers.processes == {} and workers._forks is None


def test_workers_die_with_their_fork_server():
    workers = LocalWorkers({"alice": {}, "bob": {}})
    with workers:
        pids = [p.pid for p in workers.processes.values()]
        os.kill(workers._forks.process.pid, signal.SIGKILL)
        assert all(_gone(pid) for pid in pids)  # PR_SET_PDEATHSIG: SIGTERM to each
        for process in workers.processes.values():
            assert process.wait(timeout=20) is not None


def test_forked_workers_start_from_the_environment_of_their_spawn(monkeypatch):
    """A worker forked later sees the environment as it is then, not as it was when
    the fork server started: a run's settings reach its workers either way."""
    monkeypatch.setenv("SPLITNN_LIFT_MIN_BYTES", "not a number")
    with pytest.raises(LaunchError, match="SPLITNN_LIFT_MIN_BYTES"):
        with LocalWorkers({"bob": {}}):
            pass


def test_a_worker_under_a_command_prefix_is_a_process_of_its_own():
    """A prefix (bench.tunlink's `ip netns exec NS`) wraps the worker's own command line."""
    with LocalWorkers({"bob": {}}, prefix={"bob": ["env", "SPLITNN_PREFIXED=1"]}) as workers:
        process = workers.processes["bob"]
        assert isinstance(process, subprocess.Popen)
        assert process.args[:2] == ["env", "SPLITNN_PREFIXED=1"]
        environ = open(f"/proc/{process.pid}/environ").read().split("\0")
        assert "SPLITNN_PREFIXED=1" in environ


def test_a_fork_server_that_cannot_start_says_why(tmp_path, monkeypatch):
    """A fork server whose torch does not import: the workers' start fails with its
    traceback, not with an empty log."""
    shadow = tmp_path / "shadow" / "torch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('this torch is broken')\n")
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    with pytest.raises(LaunchError, match="this torch is broken"):
        with LocalWorkers({"bob": {}}):
            pass
