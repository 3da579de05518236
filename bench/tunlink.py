"""Hosts in network namespaces of their own, joined through bench.tunswitch: a modelled
link that every TCP connection crosses, whatever its port.

    with TunLink(["alice", "bob", "claire"], delay_ms=5, mbit=1000) as link:
        link.address("bob")        # 10.78.0.3: where bob's processes listen
        link.prefix("bob")         # ["ip", "netns", "exec", NS]: run a command as bob
        enter_netns(link.netns("bob"))  # or move this (single-threaded) process there

The bench's own process (the orchestrator) stays in the machine's namespace and
reaches the hosts through a device of its own, 10.78.0.1. Packets between any two
hosts, or a host and the orchestrator, pass the switch once: the link's one-way
delay, and a line of the link's rate per direction. MTU 9000 (jumbo frames), so
that a Python switch keeps up with a gigabit. Needs root, `ip netns` and
/dev/net/tun; everything made here is removed on exit.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

from splitnn.libc import libc

SUBNET = "10.78.0"
MTU = 9000
CLONE_NEWNET = 0x40000000
ORCHESTRATOR = "orchestrator"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def available() -> str | None:
    """None where a TunLink can be made here; else why not."""
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    probe = f"splnk-probe-{os.getpid()}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return f"`ip netns add` failed: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def enter_netns(name: str) -> None:
    """Move the calling thread (and the threads it starts later) into namespace `name`:
    call it first thing in a fresh process, before it opens any socket."""
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc().setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name} failed")
    finally:
        os.close(fd)


class TunLink:
    """The namespaces, the switch and its devices; use as a context manager."""

    def __init__(self, hosts: list[str], delay_ms: float, mbit: float):
        self.hosts = list(hosts)
        self.delay_ms = delay_ms
        self.mbit = mbit
        tag = os.getpid() % 100000
        names = [ORCHESTRATOR, *self.hosts]
        self._address = {name: f"{SUBNET}.{i + 1}" for i, name in enumerate(names)}
        self._device = {name: f"sl{tag}x{i}" for i, name in enumerate(names)}
        self._netns = {host: f"splnk{tag}-{host}" for host in self.hosts}
        self._switch: subprocess.Popen | None = None
        self._made: list[str] = []

    def address(self, host: str) -> str:
        return self._address[host]

    def device(self, host: str) -> str:
        return self._device[host]

    def netns(self, host: str) -> str:
        return self._netns[host]

    def prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self._netns[host]]

    def __enter__(self) -> TunLink:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        cmd = [sys.executable, "-m", "bench.tunswitch"]
        cmd += ["--delay-ms", str(self.delay_ms), "--mbit", str(self.mbit)]
        cmd += [f"--device={self._device[n]}={a}" for n, a in self._address.items()]
        self._switch = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        if self._switch.stdout.readline().strip() != "ready":
            raise RuntimeError("bench.tunswitch did not start")
        for name, device in self._device.items():
            address = f"{self._address[name]}/24"
            if name == ORCHESTRATOR:
                _ip("addr", "add", address, "dev", device)
                _ip("link", "set", device, "mtu", str(MTU), "up")
                continue
            ns = self._netns[name]
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("link", "set", device, "netns", ns)
            _ip("-n", ns, "addr", "add", address, "dev", device)
            _ip("-n", ns, "link", "set", device, "mtu", str(MTU), "up")

    def close(self) -> None:
        if self._switch is not None:
            self._switch.kill()  # its devices go with its descriptors
            self._switch.wait()
            self._switch = None
        for ns in self._made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made.clear()
