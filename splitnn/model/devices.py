"""Which torch device a worker computes on (`splitnn-worker --device`)."""

from __future__ import annotations

import re

import torch

from splitnn.errors import SplitnnError

_CHOICES = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")


def resolve_device(text: str) -> torch.device:
    """cpu, cuda, cuda:N, or auto (the first CUDA device if there is one, else the
    CPU). A CUDA device this machine lacks is refused, before anything starts."""
    if not _CHOICES.match(text):
        raise SplitnnError(f"--device {text!r}: expected cpu, cuda, cuda:N or auto")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SplitnnError(f"--device {text}: this machine has no CUDA device torch can use")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise SplitnnError(
                f"--device {text}: there are {torch.cuda.device_count()} CUDA device(s)"
            )
    return device
