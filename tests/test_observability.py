"""What operators watch: Prometheus metrics scraped from workers during a run, the
run's curves in TensorBoard event files, JSON log lines, and no gRPC core chatter."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from splitnn.orchestrator.config import load_config
from splitnn.orchestrator.metric_sinks import TensorBoardLog
from splitnn.orchestrator.outputs import read_metrics
from splitnn.orchestrator.run import train
from splitnn.services import server as worker_server
from splitnn.transport.channels import create_channel
from splitnn.v1 import worker_pb2, worker_pb2_grpc

prometheus_parser = pytest.importorskip("prometheus_client.parser")
ROOT = Path(__file__).resolve().parent.parent
HOSTS = ("alice", "bob", "claire")


def _start_workers(extra=()):
    """The seed job's three workers in this process, each with a metrics port."""
    workers = {}
    for name in HOSTS:
        args = worker_server.parse_args(
            ["--name", name, "--listen", "127.0.0.1:0", "--insecure", "--metrics-port", "0"]
            + list(extra)
        )
        worker = worker_server.build(args)
        worker.server.start()
        workers[name] = worker
    return workers


def _stop_workers(workers) -> None:
    for worker in workers.values():
        worker.driver.close()
        worker.peers.close()
        worker.metrics_server.shutdown()
        worker.server.stop(grace=None).wait(timeout=10)


def _seed_config(tmp_path: Path, workers) -> Path:
    """The seed job on these workers, 60 epochs per owner instead of 300 (quicker)."""
    text = (ROOT / "examples" / "seed.toml").read_text().replace("epochs = 300", "epochs = 60")
    for port, name in zip((50051, 50052, 50053), HOSTS, strict=True):
        text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{workers[name].port}")
    path = tmp_path / "seed.toml"
    path.write_text(text)
    return path


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of a worker's /metrics, by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in prometheus_parser.text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _runs(samples, name: str) -> dict[str, float]:
    return {dict(k[1])["run"]: v for k, v in samples.items() if k[0] == name}


@pytest.fixture
def seed_workers(tmp_path):
    workers = _start_workers()
    try:
        yield workers, load_config(_seed_config(tmp_path, workers))
    finally:
        _stop_workers(workers)


def test_prometheus_scrape_during_a_run_shows_counters_moving(seed_workers, tmp_path):
    workers, config = seed_workers
    ports = {name: worker.metrics_port for name, worker in workers.items()}
    before = {name: scrape(port) for name, port in ports.items()}
    for name in HOSTS:
        assert _value(before[name], "splitnn_worker_ops_total", kind="forward", status="OK") == 0
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["report"] = train(config, tmp_path / "run", local=False, show_progress=False)
        except BaseException as err:  # surfaced below
            outcome["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    during = []
    try:
        while thread.is_alive():
            samples = scrape(ports["bob"])
            if _runs(samples, "splitnn_worker_segments"):
                during.append(samples)
            time.sleep(0.02)
    finally:
        thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    run_id = outcome["report"]["run_id"]
    assert len(during) >= 2, "no scrape fell inside the run"
    first, last = during[0], during[-1]
    # While it ran, bob hosted the run's segment, and his counters moved between scrapes.
    assert _runs(first, "splitnn_worker_segments") == {run_id: 1}
    assert run_id in _runs(first, "splitnn_worker_pending_batches")
    forward_first = _value(first, "splitnn_worker_ops_total", kind="forward", status="OK")
    forward_last = _value(last, "splitnn_worker_ops_total", kind="forward", status="OK")
    assert forward_last > forward_first
    assert _value(last, "splitnn_worker_received_bytes_total") > _value(
        first, "splitnn_worker_received_bytes_total"
    )
    after = {name: scrape(port) for name, port in ports.items()}
    steps = outcome["report"]["steps"]  # 180: 60 full-batch epochs per owner
    # bob's middle segment ran forward and backward once a step. In his own turn his
    # worker also ran the perimeter stages it drove: the first one forward and
    # backward, the last one forward (its backward rides in the same op).
    own = steps // 3
    bob = after["bob"]
    forwards = steps + 2 * own
    assert _value(bob, "splitnn_worker_ops_total", kind="forward", status="OK") == forwards
    assert _value(bob, "splitnn_worker_ops_total", kind="backward", status="OK") == steps + own
    assert _value(bob, "splitnn_worker_op_seconds_count", kind="forward") == forwards
    assert _value(bob, "splitnn_worker_op_seconds_sum", kind="forward") > 0
    assert _value(bob, "splitnn_worker_sent_bytes_total") > 0
    assert _value(bob, "splitnn_worker_rpcs_total", method="LoadSegment", status="OK") >= 1
    assert not _runs(bob, "splitnn_worker_segments")  # the run dropped its segments
    # alice drove her own turn: Drive calls, counted by method.
    assert _value(after["alice"], "splitnn_worker_rpcs_total", method="Drive", status="OK") >= 1


def test_refused_ops_are_counted_by_status(seed_workers):
    workers, _ = seed_workers
    worker = workers["bob"]
    with create_channel(f"127.0.0.1:{worker.port}") as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        request = worker_pb2.StepRequest(run_id="no-such-run", segments=[3])
        with pytest.raises(grpc.RpcError) as err:
            stub.Step(request, timeout=10)
    samples = scrape(worker.metrics_port)
    code = err.value.code().name
    assert _value(samples, "splitnn_worker_rpcs_total", method="Step", status=code) == 1
    assert _value(samples, "splitnn_worker_ops_total", kind="step", status=code) == 1
    assert _value(samples, "splitnn_worker_ops_total", kind="step", status="OK") == 0


def test_tensorboard_event_files_hold_the_runs_curves(seed_workers, tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    workers, config = seed_workers
    board = tmp_path / "tb"
    train(config, tmp_path / "run", local=False, sinks=[TensorBoardLog(board)])
    events = accumulator.EventAccumulator(str(board))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {f"loss/{owner}" for owner in HOSTS} <= tags
    assert {"step_time_ms", "bytes_received/all"} <= tags
    assert {f"bytes_sent/{host}" for host in HOSTS} <= tags
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    for owner in HOSTS:
        mine = [r for r in records if r["owner"] == owner]
        curve = events.Scalars(f"loss/{owner}")
        assert [e.step for e in curve] == [r["step"] for r in mine]
        for event, record in zip(curve, mine, strict=True):
            assert event.value == pytest.approx(record["loss"], rel=1e-6)
    received = [e.value for e in events.Scalars("bytes_received/all")]
    assert received == sorted(received) and received[-1] > 0


def _json_lines(text: str) -> list[dict]:
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    for line in lines:
        assert {"time", "level", "worker", "run", "step", "message"} <= set(line), line
    return lines


@pytest.mark.slow
def test_train_and_worker_log_json_lines_without_grpc_core_chatter(tmp_path):
    """`splitnn train --local --log-format json`: every line on stdout and stderr is one
    JSON object; the per-epoch lines carry the run and the step."""
    result = subprocess.run(
        [sys.executable, "-m", "splitnn.orchestrator.cli", "train", "examples/seed.toml"]
        + ["--local", "--out", str(tmp_path / "run"), "--log-format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = _json_lines(result.stdout) + _json_lines(result.stderr)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    epochs = [line for line in lines if line.get("fields", {}).get("owner") in HOSTS]
    assert len(epochs) == len(read_metrics(tmp_path / "run" / "metrics.jsonl"))
    assert all(line["run"] == report["run_id"] and line["step"] for line in epochs)
    assert "chttp2" not in result.stdout + result.stderr

    worker = subprocess.Popen(
        [sys.executable, "-m", "splitnn.services.server", "--name", "dora"]
        + ["--listen", "127.0.0.1:0", "--log-format", "json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = json.loads(worker.stdout.readline())
    finally:
        worker.terminate()
        out, err = worker.communicate(timeout=30)
    assert first["worker"] == "dora" and "listening on 127.0.0.1:" in first["message"]
    assert all(line["worker"] == "dora" for line in _json_lines(out) + _json_lines(err))


def test_a_stopped_peer_leaves_no_grpc_core_lines():
    """A client whose worker stops: gRPC core's `chttp2_transport.cc ... Got goaway`
    INFO line stays out of the output (splitnn.transport.grpc_env)."""
    script = """
import re, subprocess, sys, time
import splitnn
from splitnn.transport.client import WorkerClient
worker = subprocess.Popen([sys.executable, "-m", "splitnn.services.server", "--name", "a",
    "--listen", "127.0.0.1:0", "--log-level", "WARNING"], stdout=subprocess.PIPE, text=True)
address = re.search(r"listening on (\\S+)", worker.stdout.readline()).group(1)
client = WorkerClient("a", address)
client.status()
worker.terminate(); worker.wait()
time.sleep(1.0)
client.close()
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert not re.search(r"chttp2|goaway", result.stdout + result.stderr, re.I), result.stderr
