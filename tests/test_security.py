"""Safe on a network: mutual TLS, the bearer token, and `splitnn certs`.

Real servers on 127.0.0.1 port 0 (built by `services.server.build`, as the
worker CLI builds them); certificates are made in tmp_path.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import torch
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from splitnn.errors import SecurityError, SplitnnError, WorkerError
from splitnn.orchestrator.cli import main as splitnn_main
from splitnn.orchestrator.config import load_config
from splitnn.orchestrator.reference import load_model_file, max_weight_difference, train_reference
from splitnn.orchestrator.run import connected_workers, train
from splitnn.security import certs
from splitnn.security.policy import Security, is_loopback
from splitnn.services.server import build, parse_args
from splitnn.transport.client import WorkerClient
from splitnn.v1 import worker_pb2, worker_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "examples" / "seed.toml"
HOSTS = ("alice", "bob", "claire")
TIMEOUT = 10.0


# ---- fixtures ----------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA with certificates for the three hosts and the orchestrator, via the CLI."""
    directory = tmp_path_factory.mktemp("pki")
    assert splitnn_main(["certs", "init", "--dir", str(directory)]) == 0
    for name in (*HOSTS, "orchestrator"):
        assert splitnn_main(["certs", "issue", name, "--dir", str(directory)]) == 0
    return directory


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory) -> Path:
    """Another CA, with an orchestrator certificate of its own."""
    directory = tmp_path_factory.mktemp("other_pki")
    certs.init_ca(directory)
    certs.issue(directory, "orchestrator")
    return directory


@pytest.fixture
def serve():
    """Start workers in this process as the CLI would; all stopped at teardown."""
    started = []

    def start(name: str, *flags: str):
        args = parse_args(["--name", name, "--listen", "127.0.0.1:0", *flags])
        worker = build(args)
        host, server, port = worker.host, worker.server, worker.port
        server.start()
        started.append(worker)
        if worker.data_server is not None:  # --data-port: its address is the worker's
            worker.data_server.start()
            start.data_addresses[name] = f"127.0.0.1:{worker.data_server.port}"
        return host, f"127.0.0.1:{port}"

    start.data_addresses = {}  # type: ignore[attr-defined]
    yield start
    for worker in started:
        if worker.data_server is not None:
            worker.data_server.close()
        worker.server.stop(grace=None).wait(timeout=10)


@pytest.fixture
def clients():
    """WorkerClients made by a test; all closed at teardown."""
    made = []

    def keep(client):
        made.append(client)
        return client

    yield keep
    for client in made:
        client.close()


def tls_flags(directory: Path, name: str) -> list[str]:
    return [
        "--tls-cert",
        str(directory / f"{name}.pem"),
        "--tls-key",
        str(directory / f"{name}.key"),
        "--tls-ca",
        str(directory / "ca.pem"),
    ]


def orchestrator_security(directory: Path) -> Security:
    return Security.from_options(tls_dir=directory)


def load_first_segment(client: WorkerClient) -> None:
    config = load_config(SEED)
    client.load_segment("run1", 0, config.segments[0].layers, config.optimizer, None)


def token_file(tmp_path: Path, token: str, name: str = "token") -> Path:
    path = tmp_path / name
    path.write_text(f"  {token}\n")  # surrounding whitespace is stripped
    return path


# ---- splitnn certs -----------------------------------------------------------


def test_certs_are_signed_by_the_ca_for_both_ends_and_keys_are_private(pki):
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 3649
    for name in (*HOSTS, "orchestrator"):
        cert = x509.load_pem_x509_certificate((pki / f"{name}.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(san.get_values_for_type(x509.DNSName)) == {name, "localhost"}
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)
        assert stat.S_IMODE(os.stat(pki / f"{name}.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(pki / "ca.key").st_mode) == 0o600


def test_certs_issue_extra_names_and_refuses_to_overwrite(tmp_path, capsys):
    assert splitnn_main(["certs", "init", "--dir", str(tmp_path)]) == 0
    argv = ["certs", "issue", "alice", "--dir", str(tmp_path), "--dns", "alice.example.net"]
    assert splitnn_main([*argv, "--ip", "10.0.0.1", "--no-loopback"]) == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "alice.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["alice", "alice.example.net"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.1"]
    capsys.readouterr()
    assert splitnn_main(["certs", "init", "--dir", str(tmp_path)]) == 2
    assert splitnn_main(["certs", "issue", "alice", "--dir", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert splitnn_main(["certs", "issue", "../evil", "--dir", str(tmp_path)]) == 2
    assert splitnn_main(["certs", "issue", "bob", "--dir", str(tmp_path / "nope")]) == 2


# ---- the worker's own rules -----------------------------------------------------


def test_worker_refuses_to_serve_a_network_unprotected_unless_insecure_is_asked_for(capsys):
    with pytest.raises(SplitnnError, match="--insecure"):
        build(parse_args(["--name", "alice", "--listen", "0.0.0.0:0"]))
    from splitnn.services.server import main as worker_main

    assert worker_main(["--name", "alice", "--listen", "0.0.0.0:0"]) == 2
    assert "--insecure" in capsys.readouterr().err


def test_worker_on_loopback_starts_with_the_contract_command_alone():
    # DESIGN's contract: `splitnn-worker --name NAME --listen HOST:PORT` starts a worker;
    # on loopback no other machine can reach it, so no flag is needed there.
    worker = build(parse_args(["--name", "alice", "--listen", "127.0.0.1:0"]))
    server, port = worker.server, worker.port
    server.stop(None)
    assert port > 0


def test_insecure_off_loopback_warns(serve, caplog):
    with caplog.at_level(logging.WARNING, logger="splitnn.worker"):
        serve("alice", "--insecure")
        assert not caplog.records
        args = parse_args(["--name", "alice", "--listen", "0.0.0.0:0", "--insecure"])
        server = build(args).server
        server.stop(None)
    assert any("WARNING" in r.getMessage() and "0.0.0.0" in r.getMessage() for r in caplog.records)


def test_loopback_addresses():
    assert all(map(is_loopback, ["127.0.0.1:1", "127.3.4.5:1", "[::1]:1", "localhost:1"]))
    assert not any(map(is_loopback, ["0.0.0.0:1", "[::]:1", "10.0.0.1:1", "alice:1"]))


def test_partial_tls_flags_are_refused(pki):
    with pytest.raises(SplitnnError, match="together"):
        build(parse_args(["--name", "a", "--listen", "127.0.0.1:0", *tls_flags(pki, "a")[:2]]))
    with pytest.raises(SecurityError, match="together"):
        Security(ca=pki / "ca.pem")


# ---- mutual TLS ----------------------------------------------------------------


def test_client_without_a_certificate_is_refused_and_changes_nothing(pki, serve, clients):
    host, address = serve("alice", *tls_flags(pki, "alice"))
    ca_only = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
    options = [("grpc.ssl_target_name_override", "alice")]
    for credentials in (ca_only, None):  # TLS without a client cert; plaintext
        client = clients(
            WorkerClient(
                "alice", address, credentials, timeout=TIMEOUT, retries=0, channel_options=options
            )
        )
        with pytest.raises(WorkerError) as err:
            load_first_segment(client)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert host.segments() == []


def test_client_with_a_certificate_from_another_ca_is_refused(pki, other_pki, serve, clients):
    host, address = serve("alice", *tls_flags(pki, "alice"))
    # It trusts the right CA for the server, but presents a certificate the server's CA
    # did not sign.
    rogue = Security(
        ca=pki / "ca.pem",
        cert=other_pki / "orchestrator.pem",
        key=other_pki / "orchestrator.key",
    )
    client = clients(rogue.client_factory(timeout=TIMEOUT, retries=0)("alice", address))
    with pytest.raises(WorkerError) as err:
        load_first_segment(client)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert host.segments() == []


def test_client_with_the_right_ca_works(pki, serve, clients):
    host, address = serve("alice", *tls_flags(pki, "alice"))
    client = clients(
        orchestrator_security(pki).client_factory(timeout=TIMEOUT, retries=0)("alice", address)
    )
    assert client.status() is not None
    load_first_segment(client)
    assert len(host.segments()) == 1


def test_worker_with_a_certificate_for_another_name_is_rejected(pki, serve, clients, tmp_path):
    # The worker we call alice presents bob's certificate (same CA, valid, wrong name).
    _, address = serve("alice", *tls_flags(pki, "bob"))
    security = orchestrator_security(pki)
    text = SEED.read_text()
    for default in ("127.0.0.1:50051", "127.0.0.1:50052", "127.0.0.1:50053"):
        text = text.replace(default, address)
    config_path = tmp_path / "wrong_name.toml"
    config_path.write_text(text)
    config = load_config(config_path)
    with pytest.raises(WorkerError, match="certificate for 'alice'") as err:
        with connected_workers(config, local=False, connect_timeout=1.0, security=security):
            pass
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert "Hostname Verification" in err.value.details
    # With bob's name expected, the same worker is accepted.
    client = clients(security.client_factory(timeout=TIMEOUT, retries=0)("alice", address, "bob"))
    assert client.status() is not None


@pytest.mark.parametrize("route", ["owner", "chain"])
def test_driving_worker_checks_a_peer_against_its_configured_server_name(
    pki, serve, tmp_path, route
):
    # bob's certificate names bob-prod, not bob; the config says so, and alice's worker,
    # driving the chain, must expect that name of bob too. Every worker serves a data
    # port under the same mutual TLS: the owner's route and the chain's onward hops
    # (each host calling the next itself) go there.
    assert splitnn_main(["certs", "issue", "bob-prod", "--dir", str(pki), "--force"]) == 0
    text = SEED.read_text().replace("epochs = 300", "epochs = 3")
    text = text.replace("[training]\n", f'[training]\nroute = "{route}"\n')
    for host, default in zip(HOSTS, ("50051", "50052", "50053"), strict=True):
        flags = tls_flags(pki, "bob-prod" if host == "bob" else host)
        _, address = serve(host, *flags, "--data-port", "0")
        data = serve.data_addresses[host]
        text = text.replace(
            f'{{ address = "127.0.0.1:{default}" }}',
            f'{{ address = "{address}", data_address = "{data}" }}',
        )
    text = text.replace('bob = { address = "', 'bob = { server_name = "bob-prod", address = "')
    config_path = tmp_path / "server_name.toml"
    config_path.write_text(text)
    config = load_config(config_path)
    assert config.workers["bob"].server_name == "bob-prod" and config.route == route
    assert config.workers["bob"].data_address == serve.data_addresses["bob"]
    train(config, tmp_path / "out", local=False, security=orchestrator_security(pki))
    reference, _ = train_reference(config)
    split = load_model_file(tmp_path / "out" / "model.safetensors")
    assert max_weight_difference(split, reference.state_dict()) <= 1e-6


# ---- the bearer token ------------------------------------------------------------


def _calls(stub, metadata):
    """One call of each kind: unary, client-streaming, server-streaming, bidi."""
    yield (
        "GetStatus",
        lambda: stub.GetStatus(worker_pb2.GetStatusRequest(), timeout=TIMEOUT, metadata=metadata),
    )
    yield (
        "LoadSegment",
        lambda: stub.LoadSegment(
            iter([worker_pb2.LoadSegmentRequest(run_id="r")]), timeout=TIMEOUT, metadata=metadata
        ),
    )
    yield (
        "ExportSegment",
        lambda: list(
            stub.ExportSegment(
                worker_pb2.ExportSegmentRequest(run_id="r", index=0),
                timeout=TIMEOUT,
                metadata=metadata,
            )
        ),
    )
    yield "Exchange", lambda: list(stub.Exchange(iter([]), timeout=TIMEOUT, metadata=metadata))


def test_token_wrong_or_missing_is_unauthenticated_right_token_works(tmp_path, serve):
    host, address = serve("alice", "--token-file", str(token_file(tmp_path, "s3cret-token")))
    channel = grpc.insecure_channel(address)
    stub = worker_pb2_grpc.WorkerServiceStub(channel)
    try:
        refused = [
            (),
            (("authorization", "Bearer wrong"),),
            (("authorization", "Bearer s3cret-token-and-more"),),
            (("authorization", "s3cret-token"),),
        ]
        for metadata in refused:
            for name, call in _calls(stub, metadata):
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, (name, metadata)
        right = (("authorization", "Bearer s3cret-token"),)
        assert stub.GetStatus(worker_pb2.GetStatusRequest(), timeout=TIMEOUT, metadata=right)
        assert list(stub.Exchange(iter([]), timeout=TIMEOUT, metadata=right)) == []
        with pytest.raises(grpc.RpcError) as err:  # past the token check: the request's fault
            stub.ExportSegment(
                worker_pb2.ExportSegmentRequest(run_id="r", index=0), metadata=right
            ).next()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # The standard health probe says only "up" and answers without the token.
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()
    assert host.segments() == []


def test_owner_driven_training_with_token_only(tmp_path, serve):
    """The Drive path under a token: alice's worker calls bob and claire with it."""
    secret = token_file(tmp_path, "tok-123")
    text = SEED.read_text().replace("epochs = 300", "epochs = 5")
    for host, default in zip(HOSTS, ("50051", "50052", "50053"), strict=True):
        _, address = serve(host, "--token-file", str(secret))
        text = text.replace(f"127.0.0.1:{default}", address)
    config_path = tmp_path / "token.toml"
    config_path.write_text(text)
    config = load_config(config_path)
    security = Security.from_options(token_file=secret)
    train(config, tmp_path / "out", local=False, security=security)
    reference, _ = train_reference(config)
    split = load_model_file(tmp_path / "out" / "model.safetensors")
    assert max_weight_difference(split, reference.state_dict()) <= 1e-6
    with pytest.raises(WorkerError) as err:  # and without the token, nothing runs
        train(config, tmp_path / "out2", local=False)
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED


# ---- end to end: splitnn train --local --tls-dir ---------------------------------


def _run(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "splitnn.orchestrator.cli", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _finish(process: subprocess.Popen, timeout: float = 240) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:  # the whole group: the orchestrator and its workers
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    return output


@pytest.mark.slow
def test_train_local_with_mutual_tls_equals_the_plain_run(tmp_path):
    pki = tmp_path / "pki"
    for argv in (["init"], *(["issue", n] for n in (*HOSTS, "orchestrator"))):
        done = subprocess.run(
            [sys.executable, "-m", "splitnn.orchestrator.cli", "certs", *argv, "--dir", str(pki)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    # Both runs at once: the seed job with the owners' workers driving the chain
    # (worker -> worker calls under mTLS), and the same job in plaintext.
    secure = _run(
        ["train", str(SEED), "--local", "--tls-dir", str(pki), "--out", str(tmp_path / "tls")]
    )
    plain = _run(["train", str(SEED), "--local", "--out", str(tmp_path / "plain")])
    outputs = [_finish(secure), _finish(plain)]
    assert secure.returncode == 0, outputs[0]
    assert plain.returncode == 0, outputs[1]
    a = load_model_file(tmp_path / "tls" / "model.safetensors")
    b = load_model_file(tmp_path / "plain" / "model.safetensors")
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
