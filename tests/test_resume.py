"""A worker killed with SIGKILL mid-run: restart it, resume, and get the same weights."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from splitnn.orchestrator.checkpoint import CHECKPOINT_NAME, load_checkpoint
from splitnn.orchestrator.reference import load_model_file, max_weight_difference

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_worker(name: str, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "splitnn.services.server", "--name", name]
    cmd += ["--listen", f"127.0.0.1:{port}", "--log-level", "WARNING"]
    help_text = subprocess.run(cmd[:3] + ["--help"], capture_output=True, text=True, cwd=ROOT)
    if "--insecure" in help_text.stdout:
        cmd.append("--insecure")
    process = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    line = process.stdout.readline()
    assert "listening on" in line, line
    return process


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def write_config(path: Path, ports: dict[str, int]) -> Path:
    text = (ROOT / "examples" / "seed.toml").read_text()
    for host, port in ports.items():
        default = {"alice": 50051, "bob": 50052, "claire": 50053}[host]
        text = text.replace(f"127.0.0.1:{default}", f"127.0.0.1:{port}")
    path.write_text(text)
    return path


def train(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "splitnn.orchestrator.cli", "train", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_sigkill_a_worker_restart_resume_equals_uninterrupted_run(tmp_path):
    ports = {h: free_port() for h in ("alice", "bob", "claire")}
    config = write_config(tmp_path / "seed.toml", ports)
    workers = {h: start_worker(h, p) for h, p in ports.items()}
    out = tmp_path / "run"
    try:
        orchestrator = subprocess.Popen(
            [sys.executable, "-m", "splitnn.orchestrator.cli", "train", str(config)]
            + ["--out", str(out), "--checkpoint-every", "50"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (out / CHECKPOINT_NAME).is_file() and load_checkpoint(out).cursor.step >= 350:
                break
            time.sleep(0.05)
        os.kill(workers["bob"].pid, signal.SIGKILL)
        _, stderr = orchestrator.communicate(timeout=120)
        assert orchestrator.returncode != 0
        assert "bob" in stderr
        killed_at = load_checkpoint(out).cursor.step
        assert 350 <= killed_at < 900

        workers["bob"].wait(timeout=10)
        workers["bob"] = start_worker("bob", ports["bob"])
        resumed = train("--resume", str(out))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    finally:
        for process in workers.values():
            stop(process)

    reference = train(
        str(ROOT / "examples" / "seed.toml"), "--out", str(tmp_path / "ref"), "--local"
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    split = load_model_file(out / "model.safetensors")
    uninterrupted = load_model_file(tmp_path / "ref" / "model.safetensors")
    assert max_weight_difference(split, uninterrupted) == 0.0
    assert sum(1 for _ in (out / "metrics.jsonl").open()) == 900
