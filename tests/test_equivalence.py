"""A split run through real worker processes and the CLI equals plain PyTorch training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from splitnn.orchestrator.config import load_config
from splitnn.orchestrator.reference import max_weight_difference, train_reference
from tests import jobs

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "splitnn.orchestrator.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_equals_reference(
    config_path: Path, out: Path, *flags: str, tolerance: float = 1e-5
) -> dict:
    """`splitnn train CONFIG --local` (and `flags`) gives the reference's weights; the
    split run's weights."""
    result = run_cli("train", str(config_path), "--out", str(out), "--local", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    split = load_file(str(out / "model.safetensors"))
    reference, _ = train_reference(load_config(config_path))
    assert max_weight_difference(split, reference.state_dict()) <= tolerance
    return split


def test_seed_job_is_the_notebooks_training(tmp_path):
    """One CLI run of the seed job: the notebook's losses, its plain-PyTorch weights
    (on its own literal data and through the reference trainer), metrics and report."""
    from tests.test_notebook_toy import notebook_training_state

    out = tmp_path / "out"
    config_path = ROOT / "examples" / "seed.toml"
    result = run_cli("train", str(config_path), "--out", str(out), "--local")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    report = json.loads((out / "report.json").read_text())
    split = load_file(str(out / "model.safetensors"))

    assert round(records[0]["loss"], 5) == 3.99862
    assert round(records[-1]["loss"], 5) == 0.00088
    assert max_weight_difference(split, notebook_training_state()) <= 1e-5
    reference, _ = train_reference(load_config(config_path))
    assert max_weight_difference(split, reference.state_dict()) <= 1e-5
    assert {r["owner"] for r in records} == {"alice", "bob", "claire"}
    assert len(records) == 900 and records[-1]["step"] == 900
    assert set(report["final_loss"]) == {"alice", "bob", "claire"}
    assert all(b["sent"] > 0 and b["received"] > 0 for b in report["bytes"].values())


def test_mlp_with_nesterov_momentum_two_owners_two_rounds(tmp_path):
    assert_equals_reference(jobs.mlp_job(tmp_path), tmp_path / "out")


def test_cnn_with_adam_and_non_consecutive_owner_segments(tmp_path):
    assert_equals_reference(jobs.cnn_job(tmp_path), tmp_path / "out")


def test_adamw_mse_with_a_pinned_host_that_is_also_an_owner(tmp_path):
    assert_equals_reference(jobs.pinned_job(tmp_path), tmp_path / "out")
