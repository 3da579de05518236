"""deploy/kubernetes: every manifest valid against the Kubernetes schemas (offline), the
pieces consistent with each other and with the CLI, and the topology it describes
training the seed job across network namespaces, equal to one process."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest
import yaml

from splitnn.orchestrator.config import load_config
from splitnn.orchestrator.reference import load_model_file, max_weight_difference, train_reference
from splitnn.services import server as worker_server
from tests.kube_netns import DEPLOY, SITES, KubernetesNetns, pod_of
from tests.kustomize import by_identity, kubectl_render, render
from tests.netns import ROOT, netns_available

kubernetes_validate = pytest.importorskip("kubernetes_validate")
KUBERNETES_VERSION = "1.32"
KUSTOMIZATIONS = sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))
MANIFESTS = sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")
# cert-manager's kinds are custom resources, outside the Kubernetes schemas: the
# fields these manifests rely on are checked by hand instead.
CERT_MANAGER_REQUIRED = {
    "Certificate": ("secretName", "issuerRef"),
    "ClusterIssuer": (),
}


def _validate(obj: dict) -> None:
    if obj["apiVersion"].startswith("cert-manager.io/"):
        assert obj["apiVersion"] == "cert-manager.io/v1", obj["apiVersion"]
        for key in CERT_MANAGER_REQUIRED[obj["kind"]]:
            assert key in obj["spec"], f"{obj['kind']} {obj['metadata']['name']} lacks {key}"
        return
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_validates_against_the_schemas(path):
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert documents
    for obj in documents:
        _validate(obj)


def test_a_broken_manifest_is_refused():
    """The check above can fail: a misspelled field and a wrong type are caught."""
    deployment = yaml.safe_load((DEPLOY / "base" / "worker" / "deployment.yaml").read_text())
    deployment["spec"]["replica"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(deployment)
    deployment = yaml.safe_load((DEPLOY / "base" / "worker" / "deployment.yaml").read_text())
    deployment["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(deployment)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_kustomization_renders_valid_objects(directory):
    objects = render(directory)
    for obj in objects:
        _validate(obj)
    reference = kubectl_render(directory)
    if reference is not None:  # kubectl's own Kustomize renders the same objects
        assert by_identity(objects) == by_identity(reference)


def _worker_pod(site: str) -> tuple[str, dict]:
    return pod_of(render(DEPLOY / "sites" / site), "Deployment")


def _flags(words: list[str]) -> dict[str, str]:
    return dict(w[2:].split("=", 1) for w in words if w.startswith("--") and "=" in w)


def test_each_site_runs_a_hardened_worker_on_its_own_name():
    for site in SITES:
        namespace, pod = _worker_pod(site)
        assert namespace == f"splitnn-{site}"
        (container,) = pod["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["SPLITNN_HOST"] == site
        args = container["command"][1:] + container["args"]
        # The args parse as splitnn-worker's own (the flags exist, the values are valid).
        parsed = worker_server.parse_args([a.replace("$(SPLITNN_HOST)", site) for a in args])
        assert parsed.name == site and parsed.tls_ca and parsed.data_dir == "/data"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["grpc"] == int(parsed.listen.rsplit(":", 1)[1])
        assert ports["data"] == parsed.data_port
        assert ports["health"] == parsed.health_port
        assert ports["metrics"] == parsed.metrics_port
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == parsed.health_port, probe
        # Non-root, nothing writable but /tmp, data and certificates read-only.
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
        assert security["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/data"]["readOnly"] and mounts["/certs"]["readOnly"]
        assert container["resources"]["requests"]["cpu"]
        assert container["resources"]["requests"]["memory"]


def test_the_service_exposes_the_container_ports():
    objects = render(DEPLOY / "sites" / "alice")
    (service,) = [o for o in objects if o["kind"] == "Service"]
    _, pod = _worker_pod("alice")
    (container,) = pod["containers"]
    names = {p["name"]: p["containerPort"] for p in container["ports"]}
    for port in service["spec"]["ports"]:
        assert names[port["targetPort"]] == port["port"]
    labels = pod_of(objects, "Deployment")
    deployment = [o for o in objects if o["kind"] == "Deployment"][0]
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= template_labels.items(), labels


def _job_config() -> tuple[dict, dict]:
    objects = render(DEPLOY / "orchestrator")
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"]
    return tomllib.loads(config_map["data"]["job.toml"]), pod_of(objects, "Job")[1]


def test_the_job_trains_the_seed_job_on_the_sites_services():
    job, pod = _job_config()
    seed = tomllib.loads((ROOT / "examples" / "seed.toml").read_text())
    assert {k: v for k, v in job.items() if k != "workers"} == {
        k: v for k, v in seed.items() if k != "workers"
    }
    for site in SITES:
        host = job["workers"][site]["address"].rsplit(":", 1)[0]
        assert host == f"splitnn-worker.splitnn-{site}.svc"
        assert job["workers"][site]["data_address"] == f"{host}:50052"  # the Service's data
    # It waits on each site's health port before training.
    (init,) = pod["initContainers"]
    waited = [a for a in init["args"] if not a.startswith("--")]
    assert waited == [f"splitnn-worker.splitnn-{s}.svc:8081" for s in SITES]
    (container,) = pod["containers"]
    assert container["command"] == ["splitnn", "train"]
    assert "--log-format=json" in container["args"]


def test_cert_manager_issues_what_the_pods_mount():
    """One Certificate per party, into the Secret its pod mounts, naming the host the
    orchestrator checks (its CN is the identity its calls carry)."""
    certificates = {
        o["metadata"]["namespace"]: o
        for o in render(DEPLOY / "cert-manager")
        if o["kind"] == "Certificate" and o["metadata"]["name"] == "splitnn-tls"
    }
    job, job_pod = _job_config()
    parties = [(s, *_worker_pod(s)) for s in SITES]
    parties.append(("orchestrator", "splitnn-orchestrator", job_pod))
    for party, namespace, pod in parties:
        certificate = certificates[namespace]["spec"]
        (certs,) = [v for v in pod["volumes"] if v["name"] == "certs"]
        assert certs["secret"]["secretName"] == certificate["secretName"]
        assert certificate["commonName"] == party
        assert {"server auth", "client auth"} <= set(certificate["usages"])
        if party in SITES:
            host = job["workers"][party]["address"].rsplit(":", 1)[0]
            assert {party, host} <= set(certificate["dnsNames"])


def _issue_secrets(tmp_path) -> dict:
    """`splitnn certs` for every party, with the names cert-manager's Certificates list,
    as the Secrets `kubectl create secret generic` would make of them."""
    certs = tmp_path / "certs"
    cli = [sys.executable, "-m", "splitnn.orchestrator.cli", "certs"]
    subprocess.run(cli + ["init", "--dir", str(certs)], check=True, capture_output=True)
    secrets = {}
    for obj in render(DEPLOY / "cert-manager"):
        if obj["kind"] != "Certificate" or obj["metadata"]["name"] != "splitnn-tls":
            continue
        spec = obj["spec"]
        party = spec["commonName"]
        names = [f"--dns={d}" for d in spec.get("dnsNames", []) if d != party]
        subprocess.run(
            cli + ["issue", party, "--dir", str(certs), "--no-loopback", *names],
            check=True,
            capture_output=True,
        )
        secrets[(obj["metadata"]["namespace"], spec["secretName"])] = {
            "tls.crt": certs / f"{party}.pem",
            "tls.key": certs / f"{party}.key",
            "ca.crt": certs / "ca.pem",
        }
    return secrets


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_manifests_topology_trains_the_seed_job_across_namespaces(tmp_path):
    reason = netns_available()
    if reason:
        pytest.skip(f"network namespaces: {reason}")
    with KubernetesNetns(tmp_path / "pods", _issue_secrets(tmp_path)) as cluster:
        cluster.start_workers()
        rc, output = cluster.run_job(timeout=150)
        assert rc == 0, output
        results = cluster.volume("orchestrator", "results")
        config = load_config(cluster.volume("orchestrator", "config") / "job.toml")
        reference, _ = train_reference(config)
        trained = load_model_file(results / "model.safetensors")
        assert max_weight_difference(trained, reference.state_dict()) <= 1e-5
        for site in SITES:  # mutual TLS on the names the manifests give
            log = cluster.processes[f"{site}/worker"].output()
            assert f'"message": "splitnn-worker {site} listening on 0.0.0.0:50051"' in log
        assert '"level": "INFO"' in output and "trained 900 steps" in output
