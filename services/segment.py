"""What a worker keeps: its segments, the state of batches in flight through them, and
the caps that keep one caller from exhausting it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from splitnn.model import layers as layer_specs

# Per-batch state is keyed by (run, segments, batch id, micro-batch): several batches
# and micro-batches may be in flight through the same segments (splitnn.wire.ops).
BatchKey = tuple[str, tuple[int, ...], int, int]


def batch_name(key: BatchKey) -> str:
    """A batch in messages: its id, and its micro-batch when there are several."""
    return f"{key[2]}" if key[3] == 0 else f"{key[2]} (micro-batch {key[3]})"


@dataclass
class Limits:
    """Caps that keep one caller from exhausting the worker: on the whole worker, and
    (so that one run or one orchestrator cannot take it all) per run and per identity.
    `max_parameters` counts every hosted segment's parameters together."""

    max_segments: int = 64
    max_parameters: int = layer_specs.DEFAULT_MAX_PARAMETERS
    max_pending_batches: int = 64
    max_tensor_bytes: int = 1 << 30
    # Rows one op may name (a batch, an evaluation batch).
    max_rows: int = 1 << 16
    # How long a run may go unused before the worker drops it (services.runs).
    lease_seconds: float = 600.0
    # Shares of the worker's caps one run, and one identity's runs together, may hold.
    run_share: float = 0.5
    identity_share: float = 0.75

    def share(self, cap: int, of_run: bool) -> int:
        """A cap for one run (`of_run`) or one identity."""
        return max(1, int(cap * (self.run_share if of_run else self.identity_share)))


@dataclass
class Segment:
    """One hosted segment of a run's chain, with its own optimizer."""

    run_id: str
    index: int
    layers: list
    optimizer_spec: dict
    module: nn.Sequential
    optimizer: torch.optim.Optimizer

    def __post_init__(self):
        # Fixed once built (loading state copies into these tensors), and walked on
        # every op: listed once rather than by module recursion per batch.
        self.parameters = list(self.module.parameters())
        self.buffers = list(self.module.buffers())
        self.dtype = self.parameters[0].dtype if self.parameters else torch.float32
        self.units = _units(self.module, self.parameters)

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters)


def _units(module: nn.Module, parameters: list) -> list[tuple[nn.Module, list]]:
    """The parts a deferred backward reaches parameters from (chain.backward_chain):
    each layer of a Sequential with its own parameters, or the whole module where its
    layers share a parameter or it is not a Sequential (a host's own operator)."""
    if isinstance(module, nn.Sequential):
        units = [(layer, list(layer.parameters())) for layer in module]
        owned = [id(p) for _, params in units for p in params]
        if len(owned) == len(set(owned)) == len(parameters):
            return units
    return [(module, parameters)]


@dataclass
class PendingBatch:
    """What Backward needs from a Forward: the input leaf, the output, and the outputs
    of the parts holding parameters (apply_chain's marks; held until the backward, a
    layer's output that autograd would not have kept among them)."""

    input: torch.Tensor
    output: torch.Tensor
    marks: list | None = None
    # The chain's buffers (running statistics) from before this Forward, to undo it.
    buffers: list | None = None


@dataclass
class ForwardResult:
    """What a forward call gives back: output, or input gradient and loss."""

    output: torch.Tensor | None = None
    input_grad: torch.Tensor | None = None
    loss: float | None = None
    correct: int = 0
    count: int = 0
