"""Composite blocks a segment may hold, beside the allow-listed torch.nn layers."""

from splitnn.nn.residual import Residual

__all__ = ["Residual"]
