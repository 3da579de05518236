"""examples/cifar10_resnet.toml, a ResNet-18-style network cut owner | bob | owner, on
CIFAR-shaped synthetic data (no CIFAR copy on these machines)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from splitnn.model import layers as layer_specs
from splitnn.orchestrator.config import load_config
from tests.test_equivalence import assert_equals_reference

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cifar10_resnet.toml"


def synthetic(tmp_path: Path) -> Path:
    """The example on 16 random 3x32x32 rows per owner: one epoch of two batches."""
    text = EXAMPLE.read_text()
    rng = np.random.default_rng(0)
    for owner in ("alice", "bob"):
        for split, rows in (("train", 16), ("test", 8)):
            x = rng.standard_normal((rows, 3, 32, 32)).astype(np.float32)
            y = rng.integers(0, 10, rows).astype(np.int64)
            path = tmp_path / f"{owner}_{split}.npz"
            np.savez(path, x=x, y=y)
            text = text.replace(f"../data/cifar10/{owner}_{split}.npz", str(path))
    text = re.sub(r"(?m)^epochs = \d+", "epochs = 1", text)
    text = re.sub(r"(?m)^batch_size = \d+", "batch_size = 8", text)
    config = tmp_path / "cifar10_resnet.toml"
    config.write_text(text)
    return config


def test_the_example_is_resnet_18_sized_with_most_arithmetic_in_the_middle():
    config = load_config(EXAMPLE)
    counts = [layer_specs.count_parameters(s.layers) for s in config.segments]
    assert [s.host for s in config.segments] == ["owner", "bob", "owner"]
    assert 11_000_000 < sum(counts) < 11_300_000 and counts[1] > 0.9 * sum(counts)
    residuals = sum(1 for s in config.segments for layer in s.layers if layer["type"] == "Residual")
    assert residuals == 8  # two basic blocks in each of four stages


@pytest.mark.slow
def test_the_resnet_example_trains_on_cifar_shaped_data_as_one_process(tmp_path):
    assert_equals_reference(synthetic(tmp_path), tmp_path / "out", tolerance=1e-4)
