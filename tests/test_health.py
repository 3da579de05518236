"""The standard gRPC health service and reflection on a worker, `splitnn health`, wait_healthy."""

from __future__ import annotations

import datetime
import socket
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from splitnn.errors import HealthError
from splitnn.orchestrator import cli
from splitnn.orchestrator.cli_health import check_health, wait_healthy
from splitnn.services import server as worker_server
from splitnn.services.health import add_health_and_reflection
from splitnn.transport.channels import create_channel, create_server

WORKER_SERVICE = "splitnn.v1.WorkerService"


def _worker_args(name: str):
    base = ["--name", name, "--listen", "127.0.0.1:0"]
    try:  # plaintext for a loopback test, once the worker asks for it explicitly
        return worker_server.parse_args([*base, "--insecure"])
    except SystemExit:
        return worker_server.parse_args(base)


@pytest.fixture
def worker_address():
    """A worker built as `splitnn-worker` builds it, serving on a free loopback port."""
    worker = worker_server.build(_worker_args("alice"))
    server, port = worker.server, worker.port
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait(timeout=10)


def _free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_worker_serves_standard_health(worker_address):
    with create_channel(worker_address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", WORKER_SERVICE):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_worker_serves_reflection(worker_address):
    """What grpcurl needs: `list` and the descriptors of the worker service."""
    with create_channel(worker_address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=WORKER_SERVICE),
        ]
        listed, files = list(stub.ServerReflectionInfo(iter(requests), timeout=5))
    names = {s.name for s in listed.list_services_response.service}
    assert {
        WORKER_SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    assert files.file_descriptor_response.file_descriptor_proto, files


def test_cli_health_ok(worker_address, capsys):
    assert cli.main(["health", worker_address]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"{worker_address}: SERVING"
    assert cli.main(["health", worker_address, "--service", WORKER_SERVICE]) == 0


def test_cli_health_unreachable(capsys):
    address = f"127.0.0.1:{_free_port()}"
    start = time.monotonic()
    assert cli.main(["health", address, "--timeout", "1"]) == 1
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err
    assert f"{address} is not healthy" in err and "unreachable" in err, err


def test_cli_health_unknown_service_fails_at_once(worker_address, capsys):
    start = time.monotonic()
    assert cli.main(["health", worker_address, "--service", "nope", "--timeout", "20"]) == 1
    assert time.monotonic() - start < 5  # an answer that waiting will not change
    assert "does not report service 'nope'" in capsys.readouterr().err


def test_wait_healthy_names_the_missing_worker(worker_address):
    dead = f"127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(HealthError) as err:
        wait_healthy({"alice": worker_address, "bob": dead}, timeout=1.5)
    assert time.monotonic() - start < 6
    assert set(err.value.problems) == {"bob"}
    assert "bob" in str(err.value) and dead in str(err.value)
    wait_healthy({"alice": worker_address}, timeout=5)  # the healthy one alone passes


def test_wait_healthy_waits_for_a_late_worker():
    port = _free_port()
    server, _ = create_server(f"127.0.0.1:{port}")
    add_health_and_reflection(server)
    timer = threading.Timer(1.0, server.start)
    timer.start()
    try:
        start = time.monotonic()
        wait_healthy({"claire": f"127.0.0.1:{port}"}, timeout=15)
        assert 0.9 < time.monotonic() - start < 10
    finally:
        timer.join()
        server.stop(grace=None).wait(timeout=10)


def test_not_serving_is_not_healthy():
    server, port = create_server("127.0.0.1:0")
    health = add_health_and_reflection(server)
    server.start()
    try:
        health.enter_graceful_shutdown()  # every service NOT_SERVING
        with pytest.raises(HealthError, match="NOT_SERVING"):
            wait_healthy({"bob": f"127.0.0.1:{port}"}, timeout=1)
    finally:
        server.stop(grace=None).wait(timeout=10)


def _self_signed(host: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_wait_healthy_over_tls(tmp_path, capsys):
    cert, key = _self_signed("localhost")
    server, port = create_server(
        "127.0.0.1:0", credentials=grpc.ssl_server_credentials([(key, cert)])
    )
    add_health_and_reflection(server)
    server.start()
    address = f"localhost:{port}"
    try:
        check_health(address, 10, grpc.ssl_channel_credentials(cert))
        wait_healthy({"alice": address}, 10, {"alice": grpc.ssl_channel_credentials(cert)})
        with pytest.raises(HealthError):  # plaintext to a TLS port
            wait_healthy({"alice": address}, timeout=1)
        # The CLI's TLS flags, as `splitnn train --tls-dir` takes them (the self-signed
        # certificate doubles as the CA and the client's certificate here).
        for name in ("ca.pem", "orchestrator.pem"):
            (tmp_path / name).write_bytes(cert)
        (tmp_path / "orchestrator.key").write_bytes(key)
        assert cli.main(["health", address, "--tls-dir", str(tmp_path)]) == 0
        assert capsys.readouterr().out.strip() == f"{address}: SERVING"
        ip_address = f"127.0.0.1:{port}"
        args = ["health", ip_address, "--tls-dir", str(tmp_path), "--timeout", "2"]
        assert cli.main(args) == 1  # the certificate names localhost, not 127.0.0.1
        assert cli.main([*args, "--server-name", "localhost"]) == 0
        capsys.readouterr()
        assert cli.main(["health", address, "--tls-ca", str(tmp_path / "ca.pem")]) == 1
        assert "together" in capsys.readouterr().err  # mutual TLS: CA, cert and key
    finally:
        server.stop(grace=None).wait(timeout=10)


def test_health_port_answers_health_alone_in_plaintext_without_a_token(tmp_path):
    # The worker's own port wants a token; the health port (for probes that cannot
    # speak TLS or send tokens) answers grpc.health.v1 and nothing else.
    tokens = tmp_path / "tokens"
    tokens.write_text("orchestrator secret-token-0123456789\nalice alice-token-0123456789\n")
    base = ["--name", "alice", "--listen", "127.0.0.1:0", "--token-file", str(tokens)]
    worker = worker_server.build(worker_server.parse_args([*base, "--health-port", "0"]))
    worker.server.start()
    worker.health_server.start()
    try:
        with create_channel(f"127.0.0.1:{worker.health_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", WORKER_SERVICE):
                response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert response.status == health_pb2.HealthCheckResponse.SERVING
            status = channel.unary_unary(f"/{WORKER_SERVICE}/GetStatus")
            with pytest.raises(grpc.RpcError) as err:
                status(b"", timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with create_channel(f"127.0.0.1:{worker.port}") as channel:
            status = channel.unary_unary(f"/{WORKER_SERVICE}/GetStatus")
            with pytest.raises(grpc.RpcError) as err:
                status(b"", timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        worker.health_server.stop(grace=None)
        worker.server.stop(grace=None).wait(timeout=10)
