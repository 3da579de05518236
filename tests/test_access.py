"""Who may call what, through real worker processes with mutual TLS and with
per-identity tokens: a middle host of a run, holding its own valid credential, cannot
read an owner's rows or labels by any of the five known paths; a second orchestrator
cannot see or touch the first one's run; idle half-sent streams do not starve a
worker; and a killed `splitnn train` leaves nothing behind once the lease lapses."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitnn.orchestrator.cli import main as splitnn_main
from splitnn.orchestrator.config import load_config
from splitnn.orchestrator.local_workers import LocalWorkers
from splitnn.orchestrator.reference import max_weight_difference, train_reference
from splitnn.orchestrator.run import train
from splitnn.security.policy import Security
from splitnn.v1 import worker_pb2
from splitnn.wire import codec
from tests.helpers import assert_unchanged, refused, snapshot

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "examples" / "seed.toml"
HOSTS = ("alice", "bob", "claire")
IDENTITIES = (*HOSTS, "orchestrator", "orch2", "dave")  # dave: the CA's, in no run
DENIED = grpc.StatusCode.PERMISSION_DENIED
TIMEOUT = 30


def credentials(kind: str, directory: Path) -> dict[str, Security]:
    """Every identity's Security: certificates from one CA, or one token file."""
    if kind == "tls":
        assert splitnn_main(["certs", "init", "--dir", str(directory)]) == 0
        for name in IDENTITIES:
            assert splitnn_main(["certs", "issue", name, "--dir", str(directory)]) == 0
        return {
            name: Security.from_options(tls_dir=directory, identity=name) for name in IDENTITIES
        }
    tokens = directory / "tokens"
    tokens.write_text("".join(f"{name} {secrets.token_hex(16)}\n" for name in IDENTITIES))
    return {name: Security(token_file=tokens, identity=name) for name in IDENTITIES}


def worker_flags(kind: str, directory: Path, host: str) -> list[str]:
    if kind == "tls":
        files = [f"{host}.pem", f"{host}.key", "ca.pem"]
        flags = ["--tls-cert", "--tls-key", "--tls-ca"]
        return [x for f, p in zip(flags, files, strict=True) for x in (f, str(directory / p))]
    return ["--token-file", str(directory / "tokens")]


class Cluster:
    """Three worker processes, the credentials of every identity, and their clients."""

    def __init__(self, kind: str, directory: Path, *extra: str):
        self.kind, self.directory = kind, directory
        self.security = credentials(kind, directory)
        extra_args = {
            host: [*worker_flags(kind, directory, host), "--orchestrator", "orchestrator"]
            + ["--orchestrator", "orch2", *extra]
            for host in HOSTS
        }
        self.workers = LocalWorkers({h: {} for h in HOSTS}, extra_args=extra_args)
        self._clients = []

    def __enter__(self) -> Cluster:
        self.workers.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for client in self._clients:
            client.close()
        self.workers.__exit__(*exc)

    def client(self, identity: str, host: str):
        """A WorkerClient to `host`'s worker, as `identity`."""
        client = self.security[identity].client_factory()(host, self.workers.addresses[host])
        self._clients.append(client)
        return client

    def config(self, directory: Path, epochs: int = 3) -> Path:
        text = SEED.read_text().replace("epochs = 300", f"epochs = {epochs}")
        for host, default in zip(HOSTS, ("50051", "50052", "50053"), strict=True):
            text = text.replace(
                f'{{ address = "127.0.0.1:{default}" }}',
                f'{{ address = "{self.workers.addresses[host]}" }}',
            )
        path = directory / f"seed-{epochs}.toml"
        path.write_text(text)
        return path


@pytest.fixture(scope="module", params=["tls", "tokens"])
def cluster(request, tmp_path_factory):
    with Cluster(request.param, tmp_path_factory.mktemp(request.param)) as running:
        yield running


@pytest.fixture(scope="module")
def trained(cluster, tmp_path_factory):
    """A run of the seed job kept on the workers: (run id, its config)."""
    from splitnn.orchestrator.trainer import Trainer

    config = load_config(cluster.config(tmp_path_factory.mktemp("run")))
    clients = {h: cluster.client("orchestrator", h) for h in HOSTS}
    trainer = Trainer(config, clients, tmp_path_factory.mktemp("out"), show_progress=False)
    trainer.run(keep_segments=True)
    return trainer.run_id, config


def _rows(request, n: int = 16):
    request.data.dataset = "toy"
    request.data.indices.extend(range(n))
    return request


def _forward(stub, metadata, request, tensor=None):
    if tensor is not None:
        request.input.CopyFrom(codec.encode(tensor)[0])
    return lambda: list(stub.Forward(iter([request]), timeout=TIMEOUT, metadata=metadata))


def middle_host_attacks(run_id: str, stub, metadata) -> dict:
    """The five ways a middle host could read an owner's data, as calls to the owner."""
    spec = worker_pb2.SegmentSpec(index=9, layers=[worker_pb2.LayerSpec(type="Identity")])
    sse = worker_pb2.LOSS_KIND_SUM_SQUARED_ERROR
    loss = worker_pb2.LossSpec(kind=sse, dataset="toy", indices=list(range(16)))
    drive = worker_pb2.DriveRequest(run_id=run_id, dataset="toy", loss=sse)
    drive.stages.add(host="alice", segments=[0, 1])
    drive.stages.add(host="bob", segments=[2], address="127.0.0.1:9")
    drive.stages.add(host="alice", segments=[3, 4])
    drive.batches.add(batch_id=1, indices=[0])
    export = worker_pb2.ExportSegmentRequest(run_id=run_id, index=0)
    return {
        "load an Identity segment": lambda: stub.LoadSegment(
            iter([worker_pb2.LoadSegmentRequest(run_id=run_id, spec=spec)]),
            timeout=TIMEOUT,
            metadata=metadata,
        ),
        "forward the owner's rows": _forward(
            stub,
            metadata,
            _rows(worker_pb2.ForwardRequest(run_id=run_id, segments=[0], want_output=True)),
        ),
        "labels through a loss": _forward(
            stub,
            metadata,
            worker_pb2.ForwardRequest(run_id=run_id, segments=[4], batch_id=77, mode=1, loss=loss),
            torch.zeros(16, 2),
        ),
        "drive through its own": lambda: list(
            stub.Drive(drive, timeout=TIMEOUT, metadata=metadata)
        ),
        "export the weights": lambda: list(
            stub.ExportSegment(export, timeout=TIMEOUT, metadata=metadata)
        ),
        "list the runs": lambda: stub.GetStatus(
            worker_pb2.GetStatusRequest(), timeout=TIMEOUT, metadata=metadata
        ),
    }


def test_a_middle_host_cannot_read_the_owners_data_by_any_path(cluster, trained):
    run_id, _ = trained
    owner = cluster.client("orchestrator", "alice")
    bob = cluster.client("bob", "alice")  # bob's own valid credential, a host of the run
    before = snapshot(owner.stub, owner.metadata)

    for path, call in middle_host_attacks(run_id, bob.stub, bob.metadata).items():
        error = refused(call, DENIED)
        assert "may not" in error.details() or "not a host" in error.details(), path

    assert_unchanged(owner.stub, before, owner.metadata)


def test_a_peer_of_the_run_may_send_its_ops_and_a_stranger_may_not(cluster, trained):
    run_id, _ = trained
    op = worker_pb2.ForwardRequest(run_id=run_id, segments=[3], want_output=True)
    for identity, allowed in (("alice", True), ("dave", False)):
        client = cluster.client(identity, "claire")
        call = _forward(client.stub, client.metadata, op, torch.zeros(16, 3))
        if allowed:
            assert len(call()) == 1
        else:
            assert "not a host" in refused(call, DENIED).details()


def test_a_second_orchestrator_cannot_see_read_train_overwrite_or_drop_the_run(cluster, trained):
    run_id, config = trained
    owner = cluster.client("orchestrator", "alice")
    other = cluster.client("orch2", "alice")
    before = snapshot(owner.stub, owner.metadata)
    seg = config.segments[0]

    assert other.status().segments == []
    with pytest.raises(Exception, match="PERMISSION_DENIED"):
        other.export_segment(run_id, 0)
    with pytest.raises(Exception, match="PERMISSION_DENIED"):
        other.load_segment(run_id, 0, seg.layers, config.optimizer, None, replace=True)
    with pytest.raises(Exception, match="PERMISSION_DENIED"):
        other.drop_segment(run_id, 0)
    stub, metadata = other.stub, other.metadata
    attacks = middle_host_attacks(run_id, stub, metadata)
    for path in (
        "forward the owner's rows",
        "labels through a loss",
        "drive through its own",
    ):
        refused(attacks[path], DENIED)

    assert_unchanged(owner.stub, before, owner.metadata)
    other.load_segment("orch2-run", 0, seg.layers, config.optimizer, None)  # its own: fine
    assert [s.run_id for s in other.status().segments] == ["orch2-run"]
    assert run_id not in {s.run_id for s in other.status().segments}
    other.drop_segment("orch2-run", 0)


def test_64_idle_half_sent_streams_do_not_stop_health_or_training(cluster, tmp_path):
    dave = cluster.client("dave", "alice")
    chunk = codec.encode(torch.zeros(64, 1024), 1 << 16)[0]  # 1 of 4 chunks
    op = worker_pb2.ForwardRequest(run_id="x", segments=[0], input=chunk)
    streams, release = [], threading.Event()
    for _ in range(64):
        requests = _half_sent(worker_pb2.ExchangeRequest(forward=op), release)
        streams.append(dave.stub.Exchange(requests, metadata=dave.metadata))
    try:
        time.sleep(1.0)
        channel = grpc.insecure_channel(cluster.workers.addresses["alice"])
        if cluster.kind == "tls":
            sec = cluster.security["orchestrator"]
            channel = grpc.secure_channel(
                cluster.workers.addresses["alice"],
                sec.channel_credentials(),
                options=sec.channel_options("alice"),
            )
        with channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        config = load_config(cluster.config(tmp_path))
        train(config, tmp_path / "out", local=False, security=cluster.security["orchestrator"])
        reference, _ = train_reference(config)
        split = _load(tmp_path / "out" / "model.safetensors")
        assert max_weight_difference(split, reference.state_dict()) <= 1e-5
        refusals = sum(1 for s in streams if s.done() and s.code() is not None)
        assert refusals >= 64 - 16  # over dave's slots: refused at once
    finally:
        release.set()
        for stream in streams:
            stream.cancel()


def _half_sent(first, release: threading.Event):
    """A request stream that sends the first chunk of a tensor, then nothing more."""
    yield first
    release.wait()


def _load(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_a_killed_train_leaves_no_segment_once_the_lease_lapses(tmp_path):
    # A lease short enough to wait for, long enough for a loaded machine's pauses.
    with Cluster("tokens", tmp_path, "--run-lease-s", "4") as cluster:
        config = cluster.config(tmp_path, epochs=300)
        out = tmp_path / "out"
        tokens = str(tmp_path / "tokens")
        process = subprocess.Popen(
            [sys.executable, "-m", "splitnn.orchestrator.cli", "train", str(config)]
            + ["--out", str(out), "--token-file", tokens],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "train.err").open("w"),
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not _has_lines(out / "metrics.jsonl", 20):
                ended = process.poll() is not None
                assert not ended, (tmp_path / "train.err").read_text()[-2000:]
                assert time.monotonic() < deadline
                time.sleep(0.1)
            owner = cluster.client("orchestrator", "bob")
            assert owner.status().segments  # bob's middle segment, mid-run
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            deadline = time.monotonic() + 30
            while any(cluster.client("orchestrator", h).status().segments for h in HOSTS):
                assert time.monotonic() < deadline, "segments outlived the lease"
                time.sleep(0.5)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def _has_lines(path: Path, n: int) -> bool:
    return path.is_file() and len(path.read_text().splitlines()) >= n
