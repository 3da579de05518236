"""The Python API (splitnn.train, splitnn.load_model): the notebook's shape, the
config's code path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import splitnn
from splitnn.api import build_config
from splitnn.errors import ConfigError
from splitnn.orchestrator.reference import train_reference

ROOT = Path(__file__).resolve().parent.parent
X = torch.rand(12, 4, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 3, (12,), generator=torch.Generator().manual_seed(1))


def _by_layer(model: nn.Sequential) -> dict:
    """ "<segment>.<layer>.<param>" keys, a bare-module segment counting as one layer."""
    out = {}
    for i, segment in enumerate(model):
        layers = list(segment) if isinstance(segment, nn.Sequential) else [segment]
        for j, layer in enumerate(layers):
            out.update({f"{i}.{j}.{k}": v for k, v in layer.state_dict().items()})
    return out


def _segments():
    torch.manual_seed(3)
    return [
        nn.Sequential(nn.Linear(4, 6), nn.ReLU()),
        nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.GELU()),
        nn.Linear(5, 3),  # a bare module is a segment too
    ]


def test_the_call_becomes_a_config_with_the_segments_own_start_weights(tmp_path):
    segments = _segments()
    config = build_config(
        segments, ["owner", "bob", "owner"], {"alice": (X, Y)}, tmp_path, epochs=2, batch_size=4
    )
    assert [s.host for s in config.segments] == ["owner", "bob", "owner"]
    assert (
        config.segments[1].layers[1]
        == {
            "type": "LayerNorm",
            "normalized_shape": [5],
            "eps": 1e-05,
            "elementwise_affine": True,
        }
        or config.segments[1].layers[1]["type"] == "LayerNorm"
    )
    assert torch.equal(config.initial[2]["model.0.weight"], segments[2].weight)
    # The reference starts from them too.
    model, _ = train_reference(config)
    assert model is not None


def test_a_module_off_the_allow_list_is_refused_naming_it_and_its_position(tmp_path):
    segments = _segments()
    segments[1] = nn.Sequential(nn.Linear(6, 5), nn.LSTM(5, 5))
    with pytest.raises(ConfigError, match=r"segments\[1\]\[1\].*torch.nn.modules.rnn.LSTM"):
        build_config(segments, ["owner", "bob", "owner"], {"alice": (X, Y)}, tmp_path)


def test_unknown_options_and_bad_placements_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown option"):
        build_config(_segments(), ["owner", "bob", "owner"], {"alice": (X, Y)}, tmp_path, lr=1)
    with pytest.raises(ConfigError, match="placement"):
        build_config(_segments(), ["owner", "owner"], {"alice": (X, Y)}, tmp_path)
    with pytest.raises(ConfigError, match="training.schedule"):
        build_config(
            _segments(), ["owner", "bob", "owner"], {"alice": (X, Y)}, tmp_path, schedule="x"
        )


def test_load_model_gives_the_trained_sequential(tmp_path):
    config = build_config(_segments(), ["owner", "bob", "owner"], {"alice": (X, Y)}, tmp_path)
    model, _ = train_reference(config)
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    loaded = splitnn.load_model(config, weights)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(X), model.eval()(X))


@pytest.mark.slow
def test_train_equals_one_process_with_adam_and_two_owners(tmp_path):
    segments = _segments()
    trained = splitnn.train(
        segments=segments,
        placement=["owner", "bob", "owner"],
        data={"alice": (X, Y), "bob": (X[:8], Y[:8])},
        epochs=3,
        batch_size=4,
        loss="cross_entropy",
        optimizer={"name": "adam", "lr": 0.01},
        out=tmp_path / "out",
        tensorboard=tmp_path / "tb",
    )
    config = build_config(
        _segments(),
        ["owner", "bob", "owner"],
        {"alice": (X, Y), "bob": (X[:8], Y[:8])},
        tmp_path,
        epochs=3,
        batch_size=4,
        loss="cross_entropy",
        optimizer={"name": "adam", "lr": 0.01},
    )
    reference, _ = train_reference(config)
    ours = {
        f"{i}.{k}" if not isinstance(s, nn.Sequential) else f"{i}.{k}": v
        for i, s in enumerate(trained)
        for k, v in s.state_dict().items()
    }
    theirs = reference.state_dict()
    assert (
        max(float((ours[k.replace("2.0.", "2.")] - v).abs().max()) for k, v in theirs.items())
        <= 1e-5
    )
    assert (tmp_path / "out" / "metrics.jsonl").is_file()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*")), "no TensorBoard events"
    # The caller's segments are left as they were.
    assert torch.equal(segments[2].weight, _segments()[2].weight)


@pytest.mark.slow
def test_the_notebook_rewritten_against_the_api_runs_and_matches_plain_pytorch():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "notebook.py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Final Predictions:" in result.stdout
    assert "max |weight difference| vs plain PyTorch: 0" in result.stdout
