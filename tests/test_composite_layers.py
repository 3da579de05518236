"""Composite blocks (Residual, nested Sequential) and the layers added for vision and
sequence models, through the allow-list, the wire and real workers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import splitnn
from splitnn.api import build_config, layer_spec
from splitnn.errors import InvalidArgument
from splitnn.model.layers import (
    MAX_DEPTH,
    build_segment,
    count_parameters,
    layer_from_proto,
    layer_to_proto,
    validate_spec,
)
from splitnn.nn import Residual
from splitnn.orchestrator.reference import max_weight_difference, train_reference

LINEAR = {"type": "Linear", "in_features": 4, "out_features": 4}


def test_residual_adds_the_body_to_the_shortcut_or_the_input():
    x = torch.randn(3, 4)
    body, shortcut = nn.Linear(4, 4), nn.Linear(4, 4)
    assert torch.allclose(Residual(body)(x), body(x) + x)
    assert torch.allclose(Residual(body, shortcut)(x), body(x) + shortcut(x))


def test_composite_specs_build_travel_and_count():
    spec = [
        {"type": "Residual", "layers": [LINEAR, {"type": "LayerNorm", "normalized_shape": 4}]},
        {"type": "Residual", "layers": [LINEAR], "shortcut": [LINEAR]},
        {"type": "Sequential", "layers": [LINEAR, {"type": "Tanh"}]},
    ]
    assert [layer_from_proto(layer_to_proto(layer)) for layer in spec] == spec
    module = build_segment(spec)
    assert "1.shortcut.0.weight" in module.state_dict() and "2.0.weight" in module.state_dict()
    assert count_parameters(spec) == sum(p.numel() for p in module.parameters())
    assert module(torch.randn(2, 4)).shape == (2, 4)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"type": "Residual"}, "needs layers"),
        ({"type": "Residual", "layers": [LINEAR], "extra": []}, "no field"),
        ({"type": "Sequential", "layers": []}, "non-empty"),
        ({"type": "Sequential", "layers": [{"type": "Exec"}]}, "unknown layer type"),
    ],
)
def test_bad_composites_are_refused(bad, message):
    with pytest.raises(InvalidArgument, match=message):
        validate_spec([bad])


def test_nesting_is_bounded():
    spec = LINEAR
    for _ in range(MAX_DEPTH + 2):
        spec = {"type": "Sequential", "layers": [spec]}
    with pytest.raises(InvalidArgument, match="nested"):
        validate_spec([spec])


def test_new_layers_build_with_typed_arguments():
    spec = [
        {"type": "GroupNorm", "num_groups": 2, "num_channels": 4},
        {"type": "Dropout2d", "p": 0.0},
    ]
    assert build_segment(spec)(torch.randn(2, 4, 3, 3)).shape == (2, 4, 3, 3)
    layer = nn.TransformerEncoderLayer(8, 2, 16, 0.0, batch_first=True)
    rebuilt = build_segment([layer_spec(layer, "x")])[0]
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in layer.state_dict().items()
    }
    with pytest.raises(InvalidArgument, match="activation"):
        validate_spec(
            [{"type": "TransformerEncoderLayer", "d_model": 8, "nhead": 2, "activation": "x"}]
        )


def _model():
    torch.manual_seed(5)
    return [
        nn.Sequential(nn.Linear(8, 8), nn.ReLU()),
        nn.Sequential(
            Residual(nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))),
            Residual(nn.Linear(8, 8), shortcut=nn.Linear(8, 8)),
            nn.Sequential(nn.Linear(8, 8), nn.Tanh()),  # nested
        ),
        nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, 0.0, batch_first=True)),
        nn.Sequential(nn.Flatten(), nn.Linear(40, 3)),
    ]


@pytest.mark.slow
def test_residual_nested_and_transformer_blocks_train_as_one_process(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 5, 8, generator=g), torch.randint(0, 3, (24,), generator=g)
    kwargs = {
        "epochs": 2,
        "batch_size": 8,
        "loss": "cross_entropy",
        "optimizer": {"name": "adam", "lr": 0.01},
    }
    placement = ["owner", "bob", "claire", "owner"]
    data = {"alice": (x, y), "bob": (x[:16], y[:16])}
    trained = splitnn.train(segments=_model(), placement=placement, data=data, **kwargs)
    config = build_config(_model(), placement, data, tmp_path, **kwargs)
    reference, _ = train_reference(config)
    ours = {}
    for i, segment in enumerate(trained):
        ours.update({f"{i}.{k}": v for k, v in segment.state_dict().items()})
    assert max_weight_difference(ours, reference.state_dict()) <= 1e-5
