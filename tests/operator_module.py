"""A module a host's operator offers, for the --module tests:
`splitnn-worker --module scaled=tests.operator_module:scaled_linear`."""

from __future__ import annotations

import torch
from torch import nn


class ScaledLinear(nn.Module):
    """scale * tanh(linear(x)): not on splitnn's allow-list."""

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.tanh(self.linear(x))


def scaled_linear(in_features: int, out_features: int, scale: float = 1.0) -> nn.Module:
    return ScaledLinear(in_features, out_features, scale)


def not_a_module(**_) -> object:
    return object()
