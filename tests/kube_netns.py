"""Run the pods deploy/kubernetes describes without a cluster: one network namespace
per pod, as tests.netns does for docker-compose.yml.

Each pod runs its containers' own command, args (with Kubernetes' `$(VAR)`
expansion) and env; its volumes are directories here (Secrets and ConfigMaps
written out, claims and emptyDirs fresh), its mount paths rewritten to them; its
Service's DNS names resolve to its namespace's address. Probes are asked the way
the kubelet asks them: gRPC health on the pod's address and the probe's port.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from tests.kustomize import render
from tests.netns import CONSOLE_SCRIPTS, ROOT, NetnsNetwork, Process

DEPLOY = ROOT / "deploy" / "kubernetes"
SITES = ("alice", "bob", "claire")
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(word: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of $(VAR) in command and args (unknown ones stay as written)."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), word)


def pod_of(objects: list[dict], kind: str) -> tuple[str, dict]:
    """(namespace, pod spec) of the one object of `kind` (Deployment or Job)."""
    (obj,) = [o for o in objects if o["kind"] == kind]
    return obj["metadata"]["namespace"], obj["spec"]["template"]["spec"]


def service_names(objects: list[dict]) -> list[str]:
    """The DNS names of the Services among `objects`."""
    names = []
    for obj in objects:
        if obj["kind"] == "Service":
            name, namespace = obj["metadata"]["name"], obj["metadata"]["namespace"]
            names += [f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]
    return names


class KubernetesNetns(NetnsNetwork):
    """The sites' worker pods and the orchestrator's Job pod in namespaces of their own.

    `secrets` maps (namespace, Secret name) to {key: file} (as `kubectl create secret
    generic --from-file` would hold them)."""

    def __init__(self, workdir: Path, secrets: dict[tuple[str, str], dict[str, Path]]):
        self.workdir = workdir
        self.secrets = secrets
        self.rendered = {site: render(DEPLOY / "sites" / site) for site in SITES}
        self.rendered["orchestrator"] = render(DEPLOY / "orchestrator")
        self.pods = {site: pod_of(self.rendered[site], "Deployment") for site in SITES}
        self.pods["orchestrator"] = pod_of(self.rendered["orchestrator"], "Job")
        aliases = {pod: service_names(objects) for pod, objects in self.rendered.items()}
        super().__init__(self.rendered, aliases)

    # ---- volumes ---------------------------------------------------------------------

    def _volume_dir(self, pod: str, volume: dict) -> Path:
        namespace = self.pods[pod][0]
        where = self.workdir / pod / volume["name"]
        where.mkdir(parents=True, exist_ok=True)
        if "secret" in volume:
            for key, source in self.secrets[(namespace, volume["secret"]["secretName"])].items():
                (where / key).write_bytes(Path(source).read_bytes())
                os.chmod(where / key, volume["secret"].get("defaultMode", 0o644))
        elif "configMap" in volume:
            (config_map,) = [
                o
                for o in self.rendered[pod]
                if o["kind"] == "ConfigMap" and o["metadata"]["name"] == volume["configMap"]["name"]
            ]
            for key, text in config_map["data"].items():
                (where / key).write_text(text)
        elif not ({"persistentVolumeClaim", "emptyDir"} & set(volume)):
            raise NotImplementedError(f"volume {volume}")
        return where

    def mounts(self, pod: str, container: dict) -> dict[str, Path]:
        """Mount path -> directory here, for one container of a pod."""
        volumes = {v["name"]: v for v in self.pods[pod][1].get("volumes", [])}
        return {
            m["mountPath"]: self._volume_dir(pod, volumes[m["name"]])
            for m in container.get("volumeMounts", [])
        }

    def volume(self, pod: str, name: str) -> Path:
        """The directory standing for one of a pod's volumes."""
        return self.workdir / pod / name

    # ---- containers ------------------------------------------------------------------

    def argv(self, pod: str, container: dict) -> tuple[list[str], dict[str, str]]:
        """A container's command line here, and its environment."""
        env = {}
        for item in container.get("env", []):
            if "value" not in item:
                raise NotImplementedError(f"env {item}")
            env[item["name"]] = expand(str(item["value"]), env)
        words = [expand(str(w), env) for w in container["command"] + container.get("args", [])]
        mounts = self.mounts(pod, container)
        # One pass over every mount path (longest first), so that a directory put in
        # for one (under /tmp here) is never rewritten again for another (/tmp).
        targets = "|".join(re.escape(t) for t in sorted(mounts, key=len, reverse=True))
        pattern = re.compile(rf"(^|=)({targets})(?=/|$)")
        out = [pattern.sub(lambda m: m.group(1) + str(mounts[m.group(2)]), w) for w in words]
        if out[0] in CONSOLE_SCRIPTS:
            out = CONSOLE_SCRIPTS[out[0]] + out[1:]
        return out, {**os.environ, **env}

    def start_container(self, pod: str, container: dict) -> Process:
        """A long-running container (a worker)."""
        argv, env = self.argv(pod, container)
        return self.start_process(f"{pod}/{container['name']}", pod, argv, env)

    def run_container(self, pod: str, container: dict, timeout: float) -> tuple[int, str]:
        """A container run to its end (an init container, the Job's)."""
        argv, env = self.argv(pod, container)
        process = self.start_process(f"{pod}/{container['name']}", pod, argv, env)
        try:
            rc = process.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            rc = process.popen.wait(timeout=10)
        return rc, process.output()

    def probe(self, pod: str, probe: dict) -> bool:
        """A gRPC probe as the kubelet asks it: plaintext, the pod's address, the port."""
        address = f"{self.addresses[pod]}:{probe['grpc']['port']}"
        words = CONSOLE_SCRIPTS["splitnn"] + ["health", address, "--timeout", "2"]
        return self.succeeds(self.popen(pod, words, dict(os.environ)))

    def start_workers(self, timeout: float = 90.0) -> None:
        """Every site's worker started and ready (its readiness probe passes)."""
        for site in SITES:
            (container,) = self.pods[site][1]["containers"]
            self.start_container(site, container)
        deadline = time.monotonic() + timeout
        for site in SITES:
            (container,) = self.pods[site][1]["containers"]
            while not self.probe(site, container["readinessProbe"]):
                process = self.processes[f"{site}/{container['name']}"]
                if process.popen.poll() is not None:
                    raise RuntimeError(f"{site}'s worker exited:\n{process.output()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{site} not ready:\n{process.output()}")
                time.sleep(0.5)

    def run_job(self, timeout: float) -> tuple[int, str]:
        """The Job's pod: its init containers in turn, then its container."""
        spec = self.pods["orchestrator"][1]
        for init in spec.get("initContainers", []):
            rc, output = self.run_container("orchestrator", init, timeout)
            if rc != 0:
                return rc, f"init container {init['name']}:\n{output}"
        (container,) = spec["containers"]
        return self.run_container("orchestrator", container, timeout)
