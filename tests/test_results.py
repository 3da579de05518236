"""Evaluation through the chain, the metrics it logs, and the plot and report of a run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from splitnn.model.losses import compute_loss
from splitnn.orchestrator.config import load_config
from splitnn.orchestrator.outputs import read_metrics
from splitnn.orchestrator.reference import owner_dataset, train_reference
from splitnn.orchestrator.results import format_summary, plot_curves, report_run

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


def records(turns=3, epochs=4):
    owners = ["alice", "bob", "claire"]
    out = []
    for turn in range(turns):
        for epoch in range(1, epochs + 1):
            record = {
                "owner": owners[turn % 3],
                "round": 0,
                "turn": turn,
                "epoch": epoch,
                "step": turn * epochs + epoch,
                "loss": 1.0 / (turn * epochs + epoch),
                "accuracy": 0.5 + 0.01 * epoch,
            }
            if epoch == epochs:
                record.update(test_loss=record["loss"] * 1.1, test_accuracy=0.5)
            out.append(record)
    return out


def test_plot_curves_writes_a_png(tmp_path):
    path = plot_curves(records(), tmp_path / "curves.png", "job")
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000


def test_report_redraws_an_interrupted_run_with_a_torn_last_line(tmp_path):
    lines = [json.dumps(r) for r in records(turns=2)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"owner": "ali')
    table = report_run(tmp_path)
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG)
    assert "alice" in table and "bob" in table and "claire" not in table


def test_summary_shows_final_test_figures():
    table = format_summary(records())
    last = [line for line in table.splitlines() if line.startswith("claire")][0]
    assert "50.00%" in last


@pytest.mark.slow
def test_evaluation_through_the_chain_matches_plain_pytorch(tmp_path):
    text = (ROOT / "examples" / "seed.toml").read_text()
    text = text.replace('dataset = "toy"', 'dataset = "toy"\ntest_dataset = "toy"\neval_every = 25')
    text = text.replace("epochs = 300", "epochs = 50")
    config_path = tmp_path / "eval.toml"
    config_path.write_text(text)
    out = tmp_path / "run"
    cli = [sys.executable, "-m", "splitnn.orchestrator.cli"]
    run = subprocess.run(
        cli + ["train", str(config_path), "--out", str(out), "--local"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]

    evaluated = [r for r in read_metrics(out / "metrics.jsonl") if "test_loss" in r]
    assert [(r["owner"], r["epoch"]) for r in evaluated] == [
        (o, e) for o in ("alice", "bob", "claire") for e in (25, 50)
    ]
    config = load_config(config_path)
    model, _ = train_reference(config)
    data = owner_dataset(config, "claire", "toy")
    with torch.no_grad():
        expected = float(compute_loss("sum_squared_error", model(data.x), data.y))
    assert evaluated[-1]["test_loss"] == pytest.approx(expected, abs=1e-5)
    assert (out / "curves.png").read_bytes().startswith(PNG)

    result = tmp_path / "eval.json"
    evaluate = subprocess.run(
        cli
        + ["evaluate", str(config_path), "--model", str(out / "model.safetensors")]
        + ["--local", "--out", str(result)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
    figures = json.loads(result.read_text())
    assert set(figures) == {"alice", "bob", "claire"}
    assert figures["alice"]["test_loss"] == pytest.approx(expected, abs=1e-5)
