"""What a forward reads: an input tensor checked against the chain, or rows of the
worker's own dataset, and the labels a loss meets; each sized before it is read."""

from __future__ import annotations

from collections.abc import Callable

import torch

from splitnn.data.datasets import Dataset
from splitnn.errors import InvalidArgument
from splitnn.services.segment import Limits, Segment
from splitnn.services.sizes import check_rows


def _row_bytes(tensor: torch.Tensor) -> int:
    return tensor[0].numel() * tensor.element_size() if tensor.shape[0] else 0


def forward_input(
    chain: list[Segment],
    input: torch.Tensor | None,
    data: tuple[str, list[int]] | None,
    dataset: Callable[[str], Dataset],
    limits: Limits,
) -> torch.Tensor:
    """The chain's input: the tensor sent, or the rows named of a dataset here."""
    if (input is None) == (data is None):
        raise InvalidArgument("Forward needs exactly one of an input tensor or a data source")
    if data is not None:
        dataset_name, rows = data
        source = dataset(dataset_name)
        where = f"dataset {dataset_name[:64]!r}"
        check_rows(rows, _row_bytes(source.x), limits.max_rows, limits.max_tensor_bytes, where)
        return source.features(rows)
    assert input is not None
    expected = chain[0].dtype
    if input.dtype != expected:
        raise InvalidArgument(f"input dtype {input.dtype} does not match segment dtype {expected}")
    if input.dim() == 0:
        raise InvalidArgument("input must have a batch dimension")
    return input


def labels(
    loss: tuple[str, str, list[int]],
    batch_rows: int,
    dataset: Callable[[str], Dataset],
    limits: Limits,
) -> torch.Tensor:
    """The labels a loss names, one row per row of the batch."""
    _, dataset_name, rows = loss
    source = dataset(dataset_name)
    where = f"loss dataset {dataset_name[:64]!r}"
    check_rows(rows, _row_bytes(source.y), limits.max_rows, limits.max_tensor_bytes, where)
    y = source.labels(rows)
    if y.shape[0] != batch_rows:
        raise InvalidArgument(f"loss names {y.shape[0]} label rows for a batch of {batch_rows}")
    return y
