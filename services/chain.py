"""The arithmetic of a chain of segments, apart from the bookkeeping around it: forward,
loss, a backward pass that answers with the input gradient first, the optimizers'
step, and the snapshots that let a refused op leave everything as it was."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from splitnn.errors import InvalidArgument
from splitnn.model import optim as optim_specs
from splitnn.model.losses import compute_loss
from splitnn.services.segment import Segment


@dataclass
class OwedWork:
    """Work a backward pass put off until its answer was out: the parameter gradients,
    then the optimizers' step. `units`: (output, gradient at it, parameters) per part
    of the chain, backpropagated each from its own output to its own parameters."""

    chain: list
    units: list
    step: bool = False

    def pay(self) -> None:
        for output, grad, params in self.units:
            torch.autograd.backward(output, grad, inputs=params)
        if self.step:
            step_chain(self.chain)


class OwedLedger:
    """Work that backward passes put off until their input gradient was out, by batch
    key (run, segments, batch id, micro-batch), paid in the order it was owed: the
    same sums, in the same order, as one backward pass each."""

    def __init__(self):
        self._work: dict[tuple, OwedWork] = {}

    def __bool__(self) -> bool:
        return bool(self._work)

    def add(self, key: tuple, work: OwedWork) -> None:
        """Owe `work` for the batch `key`."""
        self._work[key] = work

    def pay(self, run_id: str, indices) -> None:
        """Pay what is owed on any of these segments of the run."""
        if not self._work:
            return
        wanted = set(indices)
        for key in [k for k in self._work if k[0] == run_id and wanted.intersection(k[1])]:
            self._work.pop(key).pay()

    def pay_all(self) -> None:
        """Pay everything owed, of every run."""
        for key in list(self._work):
            self._work.pop(key).pay()

    def discard_run(self, run_id: str) -> None:
        """Forget, unpaid, what a run owes (the run is being dropped)."""
        for key in [k for k in self._work if k[0] == run_id]:
            del self._work[key]


def all_finite(tensor: torch.Tensor) -> bool:
    """True when no element is NaN or Inf: one reduction instead of a mask (NaN and Inf
    propagate through a sum; only a sum past 1e308 of finite values reads as Inf)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    return math.isfinite(float(tensor.sum(dtype=torch.float64)))


def check_run_id(run_id: str) -> None:
    if not run_id or len(run_id) > 128:
        raise InvalidArgument("run_id must be 1 to 128 characters")


def apply_chain(chain: list[Segment], x: torch.Tensor, marks: list | None = None):
    """The chain's output for `x`. With `marks`, each part of a segment that holds
    trainable parameters (Segment.units) appends (its output, those parameters), for a
    deferred backward to reach them from there (backward_chain)."""
    try:
        for segment in chain:
            if marks is None:
                x = segment.module(x)
                continue
            for module, params in segment.units:
                x = module(x)
                trainable = [p for p in params if p.requires_grad]
                if trainable:
                    marks.append((x, trainable))
    except (RuntimeError, ValueError, IndexError) as err:
        raise InvalidArgument(f"segment {segment.index} cannot take this input: {err}") from None
    return x


def chain_loss(name: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    try:
        return compute_loss(name, output, target)
    except (RuntimeError, ValueError) as err:  # e.g. bce of an output outside [0, 1] (NaN)
        raise InvalidArgument(f"{name} cannot take this output: {err}") from None


def backward_chain(chain, out, grad, leaf, marks, defer: bool, step: bool = False):
    """Backpropagate `grad` (None for a scalar loss) from `out`. Returns (gradient of
    `leaf`, work owed). With `defer` and both a leaf and trainable parameters, only the
    leaf's gradient is computed now, with the gradient at every output in `marks` (from
    apply_chain, made whenever there is a leaf) on the way: the parameters' gradients
    (and the `step`) are owed (OwedWork), each part's from its own output, so the next
    host need not wait for them and no gradient between parts is computed twice.
    Otherwise the caller steps. Either way each gradient comes from the same kernels
    on the same values, hence the same floats."""
    params = [p for segment in chain for p in segment.parameters if p.requires_grad]
    try:
        if leaf is None:
            out.backward(grad)
            return None, None
        if not (defer and params):
            out.backward(grad)
            return leaf.grad, None
        outputs = [output for output, _ in marks]
        leaf_grad, *grads = torch.autograd.grad(
            out, [leaf, *outputs], grad, retain_graph=True, allow_unused=True
        )
    except RuntimeError as err:  # autograd refuses this graph or gradient
        raise InvalidArgument(f"backward through segments failed: {err}") from None
    if leaf_grad is None:  # as autograd.grad says of an unused input without allow_unused
        raise InvalidArgument("backward through segments failed: the input is not used")
    units = [
        (output, g, unit_params)
        for (output, unit_params), g in zip(reversed(marks), reversed(grads), strict=True)
        if g is not None  # a part whose output the chain's output does not use
    ]
    return leaf_grad, OwedWork(chain, units, step)


def step_chain(chain: list[Segment]) -> None:
    for segment in chain:
        if not segment.parameters:  # nothing to update; skip the optimizer's overhead
            continue
        segment.optimizer.step()
        for param in segment.parameters:  # zero_grad(set_to_none=True), minus its hooks
            param.grad = None


def snapshot_buffers(chain: list[Segment]):
    return [[b.detach().clone() for b in s.buffers] for s in chain]


def snapshot_grads(chain: list[Segment]):
    return [
        [None if p.grad is None else p.grad.detach().clone() for p in s.parameters] for s in chain
    ]


def restore_grads(chain: list[Segment], saved) -> None:
    for segment, grads in zip(chain, saved, strict=True):
        for param, grad in zip(segment.parameters, grads, strict=True):
            param.grad = grad


def restore_buffers(chain: list[Segment], saved) -> None:
    with torch.no_grad():
        for segment, buffers in zip(chain, saved, strict=True):
            for buffer, value in zip(segment.buffers, buffers, strict=True):
                buffer.copy_(value)


def load_state(module: nn.Module, optimizer, state: dict[str, torch.Tensor], where: str) -> None:
    model_state = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
    optim_state = {k[6:]: v for k, v in state.items() if k.startswith("optim.")}
    unknown = [k for k in state if not k.startswith(("model.", "optim."))]
    if unknown:
        raise InvalidArgument(f"{where}: unknown state entries {unknown[:3]}")
    expected = module.state_dict()
    for name, value in model_state.items():
        if name in expected and (
            value.shape != expected[name].shape or value.dtype != expected[name].dtype
        ):
            raise InvalidArgument(
                f"{where}: state {name} has shape {list(value.shape)} {value.dtype}, expected "
                f"{list(expected[name].shape)} {expected[name].dtype}"
            )
    try:
        module.load_state_dict(model_state, strict=True)
    except RuntimeError as err:
        raise InvalidArgument(f"{where}: weights do not fit the spec: {err}") from None
    if optim_state:
        try:
            optim_specs.import_state(optimizer, optim_state)
        except InvalidArgument as err:
            raise InvalidArgument(f"{where}: {err}") from None
