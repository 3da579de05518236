"""Loss functions computed at the data owner, against its own labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from splitnn.errors import InvalidArgument
from splitnn.v1 import worker_pb2

LOSS_KINDS = {
    "sum_squared_error": worker_pb2.LOSS_KIND_SUM_SQUARED_ERROR,
    "mse": worker_pb2.LOSS_KIND_MEAN_SQUARED_ERROR,
    "cross_entropy": worker_pb2.LOSS_KIND_CROSS_ENTROPY,
    "bce": worker_pb2.LOSS_KIND_BINARY_CROSS_ENTROPY,
    "bce_with_logits": worker_pb2.LOSS_KIND_BINARY_CROSS_ENTROPY_WITH_LOGITS,
}
LOSS_NAMES = {v: k for k, v in LOSS_KINDS.items()}
# Losses averaged over the batch's rows (the others are sums).
MEAN_LOSSES = frozenset({"mse", "cross_entropy", "bce", "bce_with_logits"})


def split_rows(rows: list[int], parts: int) -> list[list[int]]:
    """A batch's rows cut into `parts` micro-batches in order, as torch.tensor_split
    cuts (the first ones one row longer when the count does not divide); never an
    empty one."""
    parts = max(1, min(parts, len(rows)))
    size, extra = divmod(len(rows), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(rows[start:end])
        start = end
    return out


def micro_batch_scale(name: str, rows: int, batch_rows: int) -> float:
    """What a micro-batch's loss is backpropagated with so that the micro-batches'
    gradients add up to the whole batch's: its share of the rows for a mean loss,
    1 for a sum."""
    return rows / batch_rows if name in MEAN_LOSSES else 1.0


def loss_kind(name: str, where: str = "loss") -> worker_pb2.LossKind:
    """The wire enum for a loss name; InvalidArgument when unknown."""
    if name not in LOSS_KINDS:
        raise InvalidArgument(f"{where}: {name!r} is not one of {sorted(LOSS_KINDS)}")
    return LOSS_KINDS[name]


def compute_loss(name: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loss of a batch, exactly as the single-process reference computes it."""
    if name == "cross_entropy":
        if target.dtype.is_floating_point or target.dim() != 1 or output.dim() != 2:
            raise InvalidArgument(
                "cross_entropy needs [N, C] outputs and integer [N] labels, got "
                f"{list(output.shape)} and {target.dtype} {list(target.shape)}"
            )
        if target.shape[0] != output.shape[0]:
            raise InvalidArgument("cross_entropy: outputs and labels disagree on batch size")
        # One reduction for both bounds (-100, cross_entropy's ignore_index, is refused).
        if target.numel() and not _within(target, output.shape[1]):
            raise InvalidArgument(f"cross_entropy: labels outside 0..{output.shape[1] - 1}")
        return F.cross_entropy(output, target)
    target = target.to(output.dtype)
    if target.shape != output.shape:
        if target.dim() == 1 and output.dim() == 2 and output.shape[1] == 1:
            target = target.unsqueeze(1)
        else:
            raise InvalidArgument(
                f"{name}: output shape {list(output.shape)} does not match labels "
                f"{list(target.shape)}"
            )
    if name == "sum_squared_error":
        return ((output - target) ** 2).sum()
    if name == "mse":
        return F.mse_loss(output, target)
    if name == "bce":
        return F.binary_cross_entropy(output, target)
    if name == "bce_with_logits":
        return F.binary_cross_entropy_with_logits(output, target)
    raise InvalidArgument(f"unknown loss {name!r}")


def _within(labels: torch.Tensor, classes: int) -> bool:
    low, high = torch.aminmax(labels)
    return int(low) >= 0 and int(high) < classes


def count_correct(name: str, output: torch.Tensor, target: torch.Tensor) -> int:
    """Correct predictions in a batch: argmax for classes, a threshold for one output."""
    with torch.no_grad():
        if output.dim() == 2 and output.shape[1] > 1:
            labels = target if target.dim() == 1 else target.argmax(dim=1)
            return int((output.argmax(dim=1) == labels.long()).sum())
        threshold = 0.0 if name == "bce_with_logits" else 0.5
        predicted = output.reshape(-1) > threshold
        return int((predicted == (target.reshape(-1).float() > 0.5)).sum())
