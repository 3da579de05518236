"""Run what docker-compose.yml describes without Docker: one network namespace per service.

Every service gets a namespace with a veth link to a bridge that lives in a namespace of
its own, an address in a private test subnet that exists only inside these namespaces
(so no packet leaves the machine), and a hosts file naming every service, which
`ip netns exec` mounts over /etc/hosts. Each service runs its own compose command and
environment, with compose's container paths mapped to temporary directories and the
console scripts run from this checkout (`python -m ...`). Needs root and `ip netns`.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
# The image's WORKDIR: compose's relative paths inside the container start here.
IMAGE_WORKDIR = "/app"
# [project.scripts] of pyproject.toml, run from this checkout.
CONSOLE_SCRIPTS = {
    "splitnn": [sys.executable, "-m", "splitnn.orchestrator.cli"],
    "splitnn-worker": [sys.executable, "-m", "splitnn.services.server"],
}
SUBNET = "10.213.7"  # /24, only ever configured inside the test's own namespaces
NETNS_ETC = Path("/etc/netns")

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}."""

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("plain"):
            return env.get(match.group("plain"), "")
        expr = match.group("braced")
        for sep in (":-", "-"):
            if sep in expr:
                name, default = expr.split(sep, 1)
                value = env.get(name)
                if value is None or (sep == ":-" and value == ""):
                    return default
                return value
        return env.get(expr, "")

    return _VAR.sub(substitute, text)


def load_compose(env: dict[str, str] | None = None, path: Path = COMPOSE_FILE) -> dict:
    """docker-compose.yml parsed after variable substitution (YAML anchors merged)."""
    import yaml

    return yaml.safe_load(interpolate(path.read_text(), {} if env is None else env))


def command_words(command) -> list[str]:
    """A compose command (string or list) as argv words."""
    return shlex.split(command) if isinstance(command, str) else [str(w) for w in command]


def parse_volume(spec) -> tuple[str, str, bool]:
    """(source, target, read_only) of a short- or long-syntax compose volume."""
    if isinstance(spec, dict):
        return str(spec["source"]), str(spec["target"]), bool(spec.get("read_only"))
    parts = spec.split(":")
    source, target = parts[0], parts[1]
    return source, target, len(parts) > 2 and "ro" in parts[2].split(",")


def service_environment(service: dict) -> dict[str, str]:
    """A service's `environment`, list or mapping form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=30)


def netns_available() -> str | None:
    """None when namespaces can be made here; otherwise why not."""
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "no `ip` command"
    probe = f"snn-probe-{secrets.token_hex(3)}"
    result = _run("ip", "netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"`ip netns add` failed: {result.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


@dataclass
class Process:
    """One service's process in its namespace, with its output collected."""

    name: str
    popen: subprocess.Popen
    lines: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        self._reader.join(timeout=5)
        return "\n".join(self.lines)


class NetnsNetwork:
    """Hosts in network namespaces of their own on one bridge; a context manager.

    Each host gets an address in SUBNET and a hosts file naming every host by its name
    and its `aliases`. Everything made here (namespaces, veths, bridge, /etc/netns/<ns>
    dirs, processes started with `popen`) is undone by close(), also after a failure
    half-way.
    """

    def __init__(self, hosts, aliases: dict[str, list[str]] | None = None):
        hosts = list(hosts)
        self.aliases = {name: list((aliases or {}).get(name, [])) for name in hosts}
        tag = secrets.token_hex(3)
        self.bridge_ns = f"snn-br-{tag}"
        self.namespaces = {name: f"snn-{name[:8]}-{tag}" for name in hosts}
        self.addresses = {name: f"{SUBNET}.{10 + i}" for i, name in enumerate(hosts)}
        self.bridge_ports = {name: f"p{i}-{tag}" for i, name in enumerate(hosts)}
        self.processes: dict[str, Process] = {}
        self._made_ns: list[str] = []
        self._made_etc: list[Path] = []

    def __enter__(self):
        try:
            self._make_network()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_ns(self, ns: str) -> None:
        _run("ip", "netns", "add", ns)
        self._made_ns.append(ns)
        _run("ip", "-n", ns, "link", "set", "lo", "up")

    def _make_network(self) -> None:
        self._add_ns(self.bridge_ns)
        _run("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
        hosts = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        hosts += [
            " ".join([addr, name, *self.aliases[name]]) for name, addr in self.addresses.items()
        ]
        for name, ns in self.namespaces.items():
            self._add_ns(ns)
            port = self.bridge_ports[name]
            # Both ends are created inside the bridge namespace, so nothing ever appears
            # in the root namespace; then one end moves into the host's namespace.
            _run("ip", "-n", self.bridge_ns, "link", "add", port, "type", "veth", "peer", "eth0")
            _run("ip", "-n", self.bridge_ns, "link", "set", "eth0", "netns", ns)
            _run("ip", "-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.addresses[name]}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            etc = NETNS_ETC / ns
            etc.mkdir(parents=True, exist_ok=False)
            self._made_etc.append(etc)
            (etc / "hosts").write_text("\n".join(hosts) + "\n")

    def cut(self, host: str) -> None:
        """Unplug a host's cable: its port on the bridge goes down (packets vanish)."""
        _run("ip", "-n", self.bridge_ns, "link", "set", self.bridge_ports[host], "down")

    def popen(self, host: str, argv: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
        """Start `argv` inside the host's namespace, from the checkout, output collected."""
        env = {**env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
        for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "grpc_proxy"):
            env.pop(key, None)
        return subprocess.Popen(
            ["ip", "netns", "exec", self.namespaces[host], *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            **kwargs,
        )

    @staticmethod
    def succeeds(check: subprocess.Popen, timeout: float = 30.0) -> bool:
        """Whether a check (a probe, a healthcheck) exits 0 within `timeout`."""
        try:
            check.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            check.kill()
            check.communicate()
            return False
        return check.returncode == 0

    def start_process(self, key: str, host: str, argv: list[str], env: dict[str, str]) -> Process:
        """A long-running process in `host`'s namespace, stopped by close()."""
        process = Process(key, self.popen(host, argv, env))
        self.processes[key] = process
        return process

    def close(self) -> None:
        """Stop every process started here (by pid), remove namespaces and hosts files."""
        for process in self.processes.values():
            if process.popen.poll() is None:
                process.popen.terminate()
        for process in self.processes.values():
            try:
                process.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait(timeout=10)
        for ns in reversed(self._made_ns):
            _run("ip", "netns", "del", ns, check=False)
        self._made_ns.clear()
        for etc in self._made_etc:
            shutil.rmtree(etc, ignore_errors=True)
        self._made_etc.clear()


class ComposeNetns(NetnsNetwork):
    """The services of docker-compose.yml, each in a namespace of its own."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None, flags_to_drop=()):
        self.workdir = workdir
        self.env = dict(env or {})
        self.compose = load_compose(self.env)
        self.services: dict[str, dict] = self.compose["services"]
        self.flags_to_drop = set(flags_to_drop)
        self.mounts: dict[str, dict[str, Path]] = {}
        super().__init__(self.services)

    # ---- processes -------------------------------------------------------------------

    def _mounts(self, name: str) -> dict[str, Path]:
        """Container path -> host directory for a service's volumes (fresh temp dirs)."""
        if name not in self.mounts:
            mounts = {}
            for spec in self.services[name].get("volumes") or []:
                source, target, read_only = parse_volume(spec)
                if target.startswith(IMAGE_WORKDIR + "/"):
                    # Part of the checkout mounted over the image's copy: the checkout is
                    # the working directory here already.
                    mounts[target] = ROOT / target.removeprefix(IMAGE_WORKDIR + "/")
                    continue
                src = (ROOT / source) if not os.path.isabs(source) else Path(source)
                if read_only and src.is_dir():
                    mounts[target] = src  # e.g. a data owner's own folder, if it has one
                    continue
                # Written to (results), or absent (docker would create it empty).
                host = self.workdir / name / target.strip("/").replace("/", "_")
                host.mkdir(parents=True, exist_ok=True)
                mounts[target] = host
            self.mounts[name] = mounts
        return self.mounts[name]

    def translate(self, name: str, words: list[str]) -> list[str]:
        """A container command as a command here: console scripts, mounted paths."""
        mounts = sorted(self._mounts(name).items(), key=lambda kv: -len(kv[0]))
        out = []
        for word in words:
            if word in self.flags_to_drop:
                continue
            for target, host in mounts:
                pattern = re.compile(rf"(^|=){re.escape(target)}(?=/|$)")
                word = pattern.sub(lambda m, h=host: m.group(1) + str(h), word)
            out.append(word)
        if out and out[0] in CONSOLE_SCRIPTS:
            out = CONSOLE_SCRIPTS[out[0]] + out[1:]
        return out

    def exec_in(self, name: str, words: list[str], **kwargs) -> subprocess.Popen:
        """Start `words` (a compose command) inside the service's namespace."""
        env = {**os.environ, **service_environment(self.services[name])}
        return self.popen(name, self.translate(name, words), env, **kwargs)

    def start(self, name: str) -> Process:
        """Run the service's own compose command."""
        words = self.translate(name, command_words(self.services[name]["command"]))
        env = {**os.environ, **service_environment(self.services[name])}
        return self.start_process(name, name, words, env)

    def healthy(self, name: str) -> bool:
        """One run of the service's compose healthcheck, inside its namespace."""
        test = self.services[name]["healthcheck"]["test"]
        if isinstance(test, str):
            words = ["sh", "-c", test]
        elif test[0] == "CMD-SHELL":
            words = ["sh", "-c", test[1]]
        else:
            words = list(test[1:]) if test[0] == "CMD" else list(test)
        return self.succeeds(self.exec_in(name, words))

    def wait_for_dependencies(self, name: str, timeout: float = 60.0) -> None:
        """What `depends_on: condition: service_healthy` waits for, bounded."""
        depends = self.services[name].get("depends_on") or {}
        if isinstance(depends, list):  # short form: started is enough
            depends = {d: {} for d in depends}
        deadline = time.monotonic() + timeout
        for dependency, spec in depends.items():
            condition = (spec or {}).get("condition", "service_started")
            while condition == "service_healthy" and not self.healthy(dependency):
                process = self.processes.get(dependency)
                if process is not None and process.popen.poll() is not None:
                    raise RuntimeError(f"{dependency} exited:\n{process.output()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{dependency} not healthy after {timeout:.0f}s")
                time.sleep(0.5)
