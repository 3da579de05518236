"""One process that imports torch once and forks a run's local workers from it.

Every local worker used to be its own `python -m splitnn.services.server`, and
each paid torch's import and first-use costs (about 3 s of CPU here); on two cores
three workers and their orchestrator importing at once took most of the demo's
time. This process pays them once, then forks one child per worker, each running
the worker's own `main` with its own arguments: the children share the
imported modules' memory until they write to it.

It runs as `python -m splitnn.services.fork_server --control FD`. FD is one end of
a Unix socket pair its parent (orchestrator.forked_workers) holds the other end
of. Over it come requests, one JSON line each, `{"argv": [...], "env": {...}}`,
each with one file descriptor (SCM_RIGHTS): the pipe the child writes its
stdout and stderr into. Back go JSON lines: `{"pid": N}` per request, in order,
and `{"exit": N, "code": C}` when a child ends (C negative: killed by signal -C).
Nothing is executed but the worker's `main`; the argv is parsed by its own parser.

gRPC must not be initialised in a process that forks, so nothing here imports it:
each child imports the server module (and gRPC with it) after the fork. The
children's torch uses one thread until their own `--threads` says otherwise: no
OpenMP pool exists here to be inherited broken.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import sys
import time

from splitnn.lifetime import exit_with_parent, name_process

GRACE_S = 10.0  # how long children get between SIGTERM and SIGKILL when this stops
MAX_REQUEST = 1 << 20


def preload() -> None:
    """Import and warm what every worker needs, without gRPC."""
    import torch

    torch.set_num_threads(1)
    from splitnn.model.warm import warm_up

    warm_up()
    import safetensors.torch  # noqa: F401  (checkpoints and state blobs)


def run_child(request: dict, output_fd: int, inherited: list) -> None:
    """In the forked child: become a worker with the request's argv and env; never
    returns. `inherited`: this server's own descriptors and sockets, closed here."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for item in inherited:
            item.close() if isinstance(item, socket.socket) else os.close(item)
        os.dup2(output_fd, 1)
        os.dup2(output_fd, 2)
        os.close(output_fd)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(request["env"])
        sys.stdout.reconfigure(line_buffering=True, write_through=True)
        sys.stderr.reconfigure(line_buffering=True, write_through=True)
        reseed()
        name_process("splitnn-worker")
        argv = [str(a) for a in request["argv"]]
        sys.argv = ["splitnn-worker", *argv]
        from splitnn.services import server

        code = server.main(argv)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:  # a worker's crash is reported as its own, as a process's would be
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def reseed() -> None:
    """Fresh random state, as a process of its own would start with: forked children
    would otherwise share this process's streams."""
    import random

    import numpy
    import torch

    random.seed()
    numpy.random.seed()
    torch.seed()


class ForkServer:
    """The control loop: fork on each request, report each child's pid and exit."""

    def __init__(self, control: socket.socket):
        self.control = control
        self.children: set[int] = set()
        self.buffer = b""
        self.fds: list[int] = []  # received descriptors not yet paired with their request
        self.stopping = False
        self.wake_r, self.wake_w = os.pipe()

    def serve(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator stops us
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select through the fd
        while not self.stopping:
            try:
                ready, _, _ = select.select([self.control, self.wake_r], [], [], 1.0)
            except InterruptedError:
                ready = []
            if self.wake_r in ready:
                os.read(self.wake_r, 4096)
            self._reap()
            if self.control in ready and not self._read_requests():
                break  # the parent closed its end or died
        self._stop_children()

    def _on_term(self, *_) -> None:
        self.stopping = True

    def _read_requests(self) -> bool:
        """Fork for every complete request received; False once the peer is gone."""
        data, fds, _, _ = socket.recv_fds(self.control, 65536, 4)
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        self.buffer += data
        self.fds += fds
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if not self.fds:  # not our parent's protocol: stop, as on a closed socket
                return False
            self._fork(json.loads(line), self.fds.pop(0))
        if len(self.buffer) > MAX_REQUEST:
            return False
        return True

    def _fork(self, request: dict, output_fd: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            run_child(request, output_fd, [self.control, self.wake_r, self.wake_w, *self.fds])
        os.close(output_fd)
        self.children.add(pid)
        self._send({"pid": pid})

    def _reap(self) -> None:
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == pid:
                self.children.discard(pid)
                self._send({"exit": pid, "code": os.waitstatus_to_exitcode(status)})

    def _send(self, message: dict) -> None:
        try:
            self.control.sendall(json.dumps(message).encode() + b"\n")
        except OSError:  # the parent is gone; the children follow through their own ends
            pass

    def _stop_children(self) -> None:
        """SIGTERM every child, SIGKILL what is left after the grace period."""
        for pid in self.children:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        for pid in self.children:
            _signal(pid, signal.SIGKILL)
        while self.children:
            self._reap()
            time.sleep(0.01)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m splitnn.services.fork_server")
    p.add_argument("--control", type=int, required=True, help="fd of the control socket")
    args = p.parse_args(argv)
    exit_with_parent()
    control = socket.socket(fileno=args.control)
    preload()
    ForkServer(control).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
