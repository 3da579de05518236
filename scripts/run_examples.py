"""Train the examples split across local workers and in one process, and write the
table the README shows (accuracy, wall time, bytes on the wire) to docs/results.md.

Usage: python scripts/run_examples.py [examples/fashion_mnist_cnn.toml ...]
(prepare each example's data first: the command is at the top of its config).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from splitnn.model.losses import compute_loss, count_correct  # noqa: E402
from splitnn.orchestrator.config import load_config  # noqa: E402
from splitnn.orchestrator.reference import (  # noqa: E402
    load_model_file,
    max_weight_difference,
    owner_dataset,
    train_reference,
)


def reference_accuracy(config, model) -> float:
    """Test accuracy of the one-process model over all owners' test sets."""
    model.eval()
    correct = rows = 0
    with torch.no_grad():
        for owner in dict.fromkeys(config.owners):
            data = owner_dataset(config, owner, config.test_dataset)
            for i in range(0, data.rows, 1000):
                x, y = data.take(range(i, min(i + 1000, data.rows)))
                out = model(x)
                compute_loss(config.loss, out, y)
                correct += count_correct(config.loss, out, y)
                rows += len(y)
    return correct / rows


def main(paths: list[str]) -> None:
    lines = [
        "| example | run | final test accuracy | wall time | bytes on the wire | max weight diff |",
        "|---|---|---|---|---|---|",
    ]
    for path in paths:
        config = load_config(path)
        out = ROOT / "runs" / config.name
        if not (REUSE and (out / "report.json").is_file()):
            subprocess.run(
                [sys.executable, "-m", "splitnn.orchestrator.cli", "train", path]
                + ["--out", str(out), "--local"],
                check=True,
                cwd=ROOT,
            )
        report = json.loads((out / "report.json").read_text())
        wire = sum(b["received"] for b in report["bytes"].values())
        started = time.monotonic()
        model, _ = train_reference(config, threads=1)
        ref_time = time.monotonic() - started
        split_state = load_model_file(out / "model.safetensors")
        diff = max_weight_difference(split_state, model.state_dict())
        ref_acc = reference_accuracy(config, model)
        # The split run's final model on all owners' test data (same function).
        model.load_state_dict(split_state)
        split_acc = reference_accuracy(config, model)
        lines.append(
            f"| {config.name} | split, 3 local workers | {split_acc:.2%} | "
            f"{report['wall_time_s']:.0f} s | {wire / 1e6:.1f} MB | "
            f"{diff:.1e} |"
        )
        lines.append(f"| {config.name} | one process | {ref_acc:.2%} | {ref_time:.0f} s | 0 | - |")
        shutil.copy(out / "curves.png", ROOT / "docs" / f"{config.name}_curves.png")
        print("\n".join(lines[-2:]), flush=True)
    (ROOT / "docs" / "results.md").write_text("\n".join(lines) + "\n")


REUSE = "--reuse" in sys.argv
if __name__ == "__main__":
    examples = [a for a in sys.argv[1:] if a != "--reuse"]
    main(examples or ["examples/fashion_mnist_cnn.toml", "examples/mnist_mlp.toml"])
