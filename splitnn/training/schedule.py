"""The order of training, shared by the split run and the single-process reference.

Both sides must walk the same owners, epochs and batches in the same order,
so that the same config gives the same weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Turn:
    """One owner's turn at training: round r, position in the ring."""

    index: int
    round: int
    owner: str


def turns(owners: list[str], rounds: int) -> Iterator[Turn]:
    """Owners in turn, `rounds` times round the ring."""
    index = 0
    for r in range(rounds):
        for owner in owners:
            yield Turn(index, r, owner)
            index += 1


def batch_count(rows: int, batch_size: int) -> int:
    """Batches in one epoch of `rows` rows; batch_size 0 means the full batch."""
    return 1 if batch_size <= 0 else -(-rows // batch_size)


def batches(
    seed: int, turn: int, epoch: int, rows: int, batch_size: int, shuffle: bool
) -> list[list[int]]:
    """Row indices of each batch in one epoch; batch_size 0 means the full batch.

    The shuffle is seeded by (seed, turn, epoch) alone, so a resumed run
    replays the same order without carrying generator state.
    """
    if shuffle:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, turn, epoch])))
        order = rng.permutation(rows)
    else:
        order = np.arange(rows)
    size = rows if batch_size <= 0 else batch_size
    return [order[i : i + size].tolist() for i in range(0, rows, size)]
