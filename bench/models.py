"""Benchmark jobs as plain data.

A :class:`BenchJob` describes one split-learning training job completely: the layers of each
segment, where each segment runs, the batch size, the loss, the optimizer settings and the
data. It holds only plain values (strings, ints, floats, tuples), so it pickles cleanly into
spawned processes, and every process that calls :meth:`BenchJob.build_segments` gets the
same initial weights.

The jobs:

* :func:`seed_job` -- the tiny 5-segment chain on 16 rows of toy data.
* :func:`mnist_mlp_job` -- an MNIST-shaped 784-256-128-10 MLP in 3 segments on synthetic data.
* :func:`mnist_mlp_5way_job` -- the same MLP in the seed's 5-way layout.
* :func:`middle_heavy_job` -- a wider MLP whose middle host holds half the arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

# A layer is (name, *args), e.g. ("Linear", 4, 3) or ("Tanh",).
LayerSpec = tuple
SegmentSpec = tuple[LayerSpec, ...]

_LAYERS = {
    "Linear": nn.Linear,
    "Tanh": nn.Tanh,
    "Sigmoid": nn.Sigmoid,
    "ReLU": nn.ReLU,
    "Identity": nn.Identity,
}


def _sse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).sum()


def _cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out, y)


_LOSSES = {"sse": _sse, "cross_entropy": _cross_entropy}


def toy_data() -> tuple[torch.Tensor, torch.Tensor]:
    """All 16 combinations of 4 binary features (row i = bits of i, MSB first); y = x[:, 0:1]."""
    rows = [[float((i >> (3 - b)) & 1) for b in range(4)] for i in range(16)]
    x = torch.tensor(rows, dtype=torch.float32)
    return x, x[:, 0:1].clone()


def synthetic_mnist(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random MNIST-shaped data: float32 x [n, 784] in [0, 1), int64 y in 0..9."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 784, generator=g, dtype=torch.float32)
    y = torch.randint(0, 10, (n,), generator=g, dtype=torch.int64)
    return x, y


@dataclass(frozen=True)
class BenchJob:
    """One benchmark job, as plain data."""

    name: str
    segments: tuple[SegmentSpec, ...]
    placement: tuple[str, ...]
    batch_size: int
    loss: str  # key of _LOSSES
    lr: float
    momentum: float = 0.0
    seed: int = 0  # torch.manual_seed before building the segments
    dataset: str = "toy"  # "toy" | "synthetic_mnist"
    n_samples: int = 16
    data_seed: int = 0
    micro_batches: int = 1  # splitnn only: training.micro_batches
    route: str = "owner"  # splitnn only: training.route
    wire: str = "float32"  # splitnn only: training.wire

    def __post_init__(self) -> None:
        if len(self.segments) != len(self.placement):
            raise ValueError("one host per segment is required")
        if self.loss not in _LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}")

    # -- model -----------------------------------------------------------------------------
    def build_segments(self) -> list[nn.Sequential]:
        """Seed torch with ``self.seed`` and build one nn.Sequential per segment, in order."""
        torch.manual_seed(self.seed)
        return [
            nn.Sequential(*(_LAYERS[name](*args) for name, *args in seg)) for seg in self.segments
        ]

    @property
    def data_owner(self) -> str:
        """Host of segment 0; it holds the data and the labels."""
        return self.placement[0]

    @property
    def hosts(self) -> list[str]:
        """Distinct hosts, in order of first appearance (data owner first)."""
        return list(dict.fromkeys(self.placement))

    def stages(self) -> list[tuple[str, list[int]]]:
        """Runs of consecutive segments on the same host: ``[(host, [segment indices]), ...]``."""
        out: list[tuple[str, list[int]]] = []
        for i, host in enumerate(self.placement):
            if out and out[-1][0] == host:
                out[-1][1].append(i)
            else:
                out.append((host, [i]))
        return out

    # -- training ----------------------------------------------------------------------------
    def loss_fn(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _LOSSES[self.loss](out, y)

    def optimizer_kwargs(self) -> dict[str, float]:
        kw: dict[str, float] = {"lr": self.lr}
        if self.momentum:
            kw["momentum"] = self.momentum
        return kw

    def make_optimizer(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, **self.optimizer_kwargs())

    # -- data ----------------------------------------------------------------------------------
    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dataset == "toy":
            return toy_data()
        if self.dataset == "synthetic_mnist":
            return synthetic_mnist(self.n_samples, self.data_seed)
        raise ValueError(f"unknown dataset {self.dataset!r}")

    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The data cut into mini-batches, in order (no shuffling; step i uses batch i % n)."""
        x, y = self.data()
        return list(zip(x.split(self.batch_size), y.split(self.batch_size), strict=True))


def seed_job() -> BenchJob:
    """The 5-segment toy chain: full batch of 16 rows, SGD lr 0.2, summed squared error."""
    return BenchJob(
        name="seed",
        segments=(
            (("Linear", 4, 3), ("Tanh",)),
            (("Linear", 3, 3), ("Sigmoid",)),
            (("Linear", 3, 3), ("Sigmoid",)),
            (("Linear", 3, 2), ("Tanh",)),
            (("Linear", 2, 1), ("Sigmoid",)),
        ),
        placement=("alice", "alice", "bob", "claire", "alice"),
        batch_size=16,
        loss="sse",
        lr=0.2,
        dataset="toy",
        n_samples=16,
    )


def _mnist_shaped(name, segments, placement, batch_size, n_samples) -> BenchJob:
    """A job on synthetic MNIST-shaped rows: SGD 0.01 with momentum 0.9, cross entropy."""
    return BenchJob(
        name=name,
        segments=segments,
        placement=placement,
        batch_size=batch_size,
        loss="cross_entropy",
        lr=0.01,
        momentum=0.9,
        dataset="synthetic_mnist",
        n_samples=n_samples,
        data_seed=0,
    )


def mnist_mlp_job(n_samples: int = 6400) -> BenchJob:
    """MNIST-shaped MLP 784-256-128-10 as owner | bob | owner; batch 64, SGD 0.01 m 0.9, CE."""
    segments = (
        (("Linear", 784, 256), ("ReLU",)),
        (("Linear", 256, 128), ("ReLU",)),
        (("Linear", 128, 10),),
    )
    return _mnist_shaped("mnist_mlp", segments, ("alice", "bob", "alice"), 64, n_samples)


def mnist_mlp_5way_job(n_samples: int = 6400) -> BenchJob:
    """The same MLP cut into the seed's 5-way layout [owner, owner, bob, claire, owner]."""
    segments = (
        (("Linear", 784, 256),),
        (("ReLU",),),
        (("Linear", 256, 128), ("ReLU",)),
        (("Linear", 128, 10),),
        (("Identity",),),
    )
    placement = ("alice", "alice", "bob", "claire", "alice")
    return _mnist_shaped("mnist_mlp_5way", segments, placement, 64, n_samples)


def middle_heavy_job(n_samples: int = 8192) -> BenchJob:
    """An MNIST-shaped MLP whose middle host, bob, holds about half the arithmetic,
    at batch 1024: alice 784-1024-256 (1.07M multiply-adds a row) | bob 256-2048-256
    (1.05M) | alice 256-10. The cuts are 256 wide, so a row moves 4 KiB a step
    (activation and gradient, each way) for about 13 MFLOP of work."""
    segments = (
        (("Linear", 784, 1024), ("ReLU",), ("Linear", 1024, 256), ("ReLU",)),
        (("Linear", 256, 2048), ("ReLU",), ("Linear", 2048, 256), ("ReLU",)),
        (("Linear", 256, 10),),
    )
    return _mnist_shaped("middle_heavy", segments, ("alice", "bob", "alice"), 1024, n_samples)


JOBS = {
    "seed": seed_job,
    "mnist_mlp": mnist_mlp_job,
    "mnist_mlp_5way": mnist_mlp_5way_job,
    "middle_heavy": middle_heavy_job,
}
