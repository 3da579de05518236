"""A residual block: body(x) + (shortcut(x) if there is a shortcut else x)."""

from __future__ import annotations

import torch
from torch import nn


def _sequential(module: nn.Module | None) -> nn.Sequential | None:
    if module is None or isinstance(module, nn.Sequential):
        return module
    return nn.Sequential(module)


class Residual(nn.Module):
    """`body(x) + shortcut(x)`, or `body(x) + x` without a shortcut. Body and shortcut
    are kept as nn.Sequential (a single module is wrapped), so that the state keys are
    the same whether the block was built in Python or from a config
    (`{ type = "Residual", layers = [...], shortcut = [...] }`): body.0.weight..."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None):
        super().__init__()
        self.body = _sequential(body)
        self.shortcut = _sequential(shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + (self.shortcut(x) if self.shortcut is not None else x)
