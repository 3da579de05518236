"""Narrowing float tensors for the wire (training.wire), and widening them back.

float32 sends tensors as they are: exact, the only format with equivalence to
one process. float16 and bfloat16 halve the bytes (float16 keeps 10 bits of
mantissa in a narrow range, bfloat16 float32's range with 7 bits). int8 sends one
byte per value and one float32 scale per row (the row's largest magnitude over
127, rounding to nearest): about a quarter of the bytes. Only floating tensors are
narrowed; the receiver restores the sender's dtype before anything computes.
"""

from __future__ import annotations

import numpy as np
import torch

from splitnn.errors import InvalidArgument
from splitnn.v1 import worker_pb2

WIRE_FORMATS = {
    "float32": worker_pb2.WIRE_FORMAT_UNSPECIFIED,
    "float16": worker_pb2.WIRE_FORMAT_FLOAT16,
    "bfloat16": worker_pb2.WIRE_FORMAT_BFLOAT16,
    "int8": worker_pb2.WIRE_FORMAT_INT8,
}
_NARROW: dict[int, torch.dtype] = {
    worker_pb2.WIRE_FORMAT_FLOAT16: torch.float16,
    worker_pb2.WIRE_FORMAT_BFLOAT16: torch.bfloat16,
    worker_pb2.WIRE_FORMAT_INT8: torch.int8,
}
_WIDE = (torch.float32, torch.float64)


def wire_format(name: str) -> int:
    """The WireFormat of a training.wire name."""
    return WIRE_FORMATS[name]


def narrow(tensor: torch.Tensor, wire: int) -> tuple[torch.Tensor, bytes | None]:
    """The tensor to send for `wire`, and the int8 row scales (None otherwise). A tensor
    that is not float32/float64, or a format this build lacks, goes as it is."""
    target = _NARROW.get(wire)
    if target is None or tensor.dtype not in _WIDE:
        return tensor, None
    t = tensor.detach()
    if target is not torch.int8:
        return t.to(target), None
    if t.dim() == 0:
        t = t.reshape(1)
    rows = t.reshape(t.shape[0], -1).to(torch.float32)
    scales = rows.abs().amax(dim=1) / 127.0 if rows.shape[1] else torch.zeros(rows.shape[0])
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(rows / safe[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(tensor.shape), scales.numpy().astype("<f4").tobytes()


def widen(tensor: torch.Tensor, dtype: torch.dtype, row_scales: bytes) -> torch.Tensor:
    """The received narrow tensor restored to the sender's `dtype`."""
    if dtype not in _WIDE:
        raise InvalidArgument(f"a tensor is widened to float32 or float64, not {dtype}")
    if tensor.dtype in (torch.float16, torch.bfloat16):
        if row_scales:
            raise InvalidArgument("row scales come only with int8")
        return tensor.to(dtype)
    if tensor.dtype is not torch.int8:
        raise InvalidArgument(f"a {tensor.dtype} tensor is not a narrowed one")
    rows = tensor.shape[0] if tensor.dim() else 1
    if len(row_scales) != 4 * rows:
        raise InvalidArgument(f"int8 tensor with {rows} rows needs {4 * rows} bytes of scales")
    scales = torch.from_numpy(np.frombuffer(row_scales, dtype="<f4").copy())
    if not bool(torch.isfinite(scales).all()):
        raise InvalidArgument("int8 row scales hold NaN or Inf")
    q = tensor.reshape(rows, -1).to(torch.float32)
    return (q * scales[:, None]).reshape(tensor.shape).to(dtype)
