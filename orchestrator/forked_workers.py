"""Local workers forked from one process that imported torch once (services.fork_server).

`LocalWorkers` starts its workers through a `ForkServer` where the platform can
fork: each worker then skips torch's import and first-use costs, which four
processes paying at once on two cores made the bulk of `splitnn demo`'s time.
A `ForkedProcess` is what `subprocess.Popen` is to the other path: the worker's
own pid (it is stopped by that id), its output as a text stream, `poll`, `wait`,
`terminate`, `kill`. The fork server is the workers' parent and reaps them; it
reports each exit here. SPLITNN_FORK_WORKERS=0 starts every worker as a process
of its own instead.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

PID_TIMEOUT_S = 120.0  # the fork server imports torch before its first fork


def can_fork() -> bool:
    """Whether local workers are forked: on Linux, unless turned off. (macOS forbids
    much of what a process that forks after loading native libraries may do.)"""
    return (
        os.environ.get("SPLITNN_FORK_WORKERS", "1") != "0"
        and sys.platform.startswith("linux")
        and hasattr(socket, "send_fds")
    )


class ForkedProcess:
    """One forked worker, with the parts of the Popen interface LocalWorkers uses."""

    def __init__(self, server: ForkServer, stdout):
        self._server = server
        self.stdout = stdout
        self._pid: int | None = None
        self.returncode: int | None = None

    @property
    def pid(self) -> int | None:
        """The worker's pid, once the fork server has forked it (None if it never will)."""
        self._server.wait_for(lambda: self._pid is not None or self._server.gone, PID_TIMEOUT_S)
        return self._pid

    def poll(self) -> int | None:
        with self._server.changed:
            if self.returncode is None and self._server.gone:
                if self._pid is None:  # the fork server died before it forked this one
                    self.returncode = self._server.exit_code()
                elif not _alive(self._pid):  # orphaned when it died; its exit went unseen
                    self.returncode = -signal.SIGTERM
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if left <= 0:
                raise subprocess.TimeoutExpired(f"worker {self._pid}", timeout or 0)
            self._server.wait_for(lambda: self.returncode is not None, left)
        assert self.returncode is not None
        return self.returncode

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def send_signal(self, sig: int) -> None:
        pid = self.pid
        if pid is not None and self.poll() is None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


class ForkServer:
    """The parent's side of one fork server process: spawn workers, learn their exits."""

    def __init__(self):
        self._socket, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        server = "splitnn.services.fork_server"
        cmd = [sys.executable, "-m", server, "--control", str(theirs.fileno())]
        try:
            self.process = subprocess.Popen(
                cmd,
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # it prints nothing but its errors
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,  # Ctrl-C in the terminal goes to us; we stop it.
            )
        finally:
            theirs.close()
        self.log: list[str] = []  # its own output: why it failed, if it did
        self._drainer = threading.Thread(target=self._drain, name="fork-server-log", daemon=True)
        self._drainer.start()
        self.changed = threading.Condition()
        self.gone = False
        self._waiting: list[ForkedProcess] = []  # spawned, pid not yet known, in order
        self._by_pid: dict[int, ForkedProcess] = {}
        self._send_lock = threading.Lock()
        threading.Thread(target=self._read, name="fork-server", daemon=True).start()

    def spawn(self, argv: list[str], env: dict[str, str]) -> ForkedProcess:
        """Ask for a worker running `splitnn-worker argv` under `env`; returns at once."""
        read_end, write_end = os.pipe()
        stdout = os.fdopen(read_end, "r", encoding="utf-8", errors="replace")
        forked = ForkedProcess(self, stdout)
        message = json.dumps({"argv": argv, "env": env}).encode() + b"\n"
        try:
            with self._send_lock:
                with self.changed:
                    self._waiting.append(forked)
                sent = socket.send_fds(self._socket, [message], [write_end])
                if sent < len(message):
                    self._socket.sendall(message[sent:])
        except OSError:
            with self.changed:
                self.gone = True
                self.changed.notify_all()
        finally:
            os.close(write_end)
        return forked

    def wait_for(self, predicate, timeout: float | None) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    def exit_code(self) -> int:
        """The fork server's own exit status once it is gone (1 if it is still running)."""
        code = self.process.poll()
        return 1 if code is None or code == 0 else code

    def last_words(self, timeout: float = 2.0) -> list[str]:
        """Its output, all of it once it has exited (its stderr then reaches its end)."""
        self._drainer.join(timeout)
        return list(self.log)

    def _read(self) -> None:
        try:
            for line in self._socket.makefile("rb"):
                self._receive(json.loads(line))
        except (OSError, ValueError):  # closed by close(), or the server died mid-line
            pass
        self.process.wait()
        with self.changed:
            self.gone = True  # its children got SIGTERM as it died (PR_SET_PDEATHSIG)
            self.changed.notify_all()

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.log.append(line.rstrip())
            if len(self.log) > 200:
                del self.log[:100]

    def _receive(self, message: dict) -> None:
        with self.changed:
            if "pid" in message and self._waiting:
                forked = self._waiting.pop(0)
                forked._pid = message["pid"]
                self._by_pid[forked._pid] = forked
            elif "exit" in message and message["exit"] in self._by_pid:
                self._by_pid.pop(message["exit"]).returncode = message["code"]
            self.changed.notify_all()

    def close(self, timeout: float = 15.0) -> None:
        """Stop the fork server (it stops any worker still running, then exits)."""
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._socket.close()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.wait_for(lambda: self.gone, 5.0)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie has ended: only its parent's reaping is left)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
