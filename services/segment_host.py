"""The worker's logic: hosted segments, their optimizers, and per-batch state.

Plain Python, no gRPC: the servicer adapts requests to these methods, and the
exceptions from splitnn.errors say which status code a failure gets. Every
method either completes or leaves the host exactly as it was.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import torch

from splitnn.data.datasets import Dataset
from splitnn.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NumericalError,
)
from splitnn.model import layers as layer_specs
from splitnn.model import optim as optim_specs
from splitnn.model.losses import count_correct
from splitnn.services import inputs, quota
from splitnn.services.chain import (
    OwedLedger,
    all_finite,
    apply_chain,
    backward_chain,
    chain_loss,
    check_run_id,
    load_state,
    restore_buffers,
    restore_grads,
    snapshot_buffers,
    snapshot_grads,
    step_chain,
)
from splitnn.services.expectations import Expectations
from splitnn.services.replay import ReplayCache
from splitnn.services.runs import Runs
from splitnn.services.segment import (
    ForwardResult,
    Limits,
    PendingBatch,
    Segment,
    batch_name,
)
from splitnn.services.sizes import ActivationSizes
from splitnn.wire.ops import OpKey, OpKind


@dataclass
class SegmentHost:
    """All segments a worker hosts, for every run, and its datasets."""

    name: str
    datasets: dict[str, Dataset] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    # Where segments, optimizer state and per-batch state live (--device). Tensors
    # come here after decoding and leave for the CPU when encoded (codec); exports
    # and checkpoints are CPU tensors, so hosts on different devices train together.
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # --precision bfloat16: the segments' forward runs under autocast; what leaves this
    # host (outputs, gradients) keeps the dtype that came in. None: as built (float32).
    autocast: torch.dtype | None = None

    def __post_init__(self):
        self._segments: dict[tuple[str, int], Segment] = {}
        self._pending: dict[tuple, PendingBatch] = {}
        self._lock = threading.RLock()
        # Parameter gradients and steps that backward passes put off until their input
        # gradient was out, by (run, segments, batch id, micro-batch), paid in the order
        # they were owed. Any other use of those segments pays them first; the handler
        # that answered pays them otherwise (see settle).
        self._owed = OwedLedger()
        self.replay = ReplayCache()
        # Counts and times every op applied here (services.metrics.WorkerMetrics), or None.
        self.meter = None
        # The driver's own last stages, armed for forwards the chain brings.
        self.expected = Expectations()
        self.runs = Runs(self.limits.lease_seconds)
        self.sizes = ActivationSizes(self.limits.max_tensor_bytes)
        self._pending_floor = quota.pending_floor(self.limits)

    # ---- loading, export, drop -------------------------------------------------

    def load_segment(
        self,
        run_id: str,
        index: int,
        layers: list,
        optimizer_spec: dict,
        state: dict[str, torch.Tensor] | None,
        replace: bool = False,
        owner: str | None = None,
        callers=(),
        peers=None,
    ) -> Segment:
        """Build a segment from its spec and state; nothing changes if any part is bad.
        A new run belongs to `owner`; `callers` are the peers that may send its ops;
        `peers` where its hosts listen (host -> runs.PeerAddress's fields)."""
        check_run_id(run_id)
        where = f"segment {index}"
        layer_specs.validate_spec(layers, where)
        optimizer_spec = optim_specs.normalize(optimizer_spec, f"{where}.optimizer")
        key = (run_id, index)
        parameters = layer_specs.count_parameters(layers, where)
        with self._lock:
            self._check_slot(key, replace, owner, parameters)
        module = layer_specs.build_segment(layers, where, max_parameters=None)  # counted
        module.to(self.device)
        # One explicit param group: torch refuses a bare empty parameter list, and a
        # parameter-free segment (Identity, ReLU, Flatten...) is legitimate.
        optimizer = optim_specs.build_optimizer(
            [{"params": list(module.parameters())}], optimizer_spec
        )
        if state:
            load_state(module, optimizer, state, where)
        segment = Segment(run_id, index, layers, optimizer_spec, module, optimizer)
        with self._lock:
            # Again: another load may have won meanwhile.
            self._check_slot(key, replace, owner, parameters)
            # Owed work of a chain with the replaced segment: the other segments' part
            # still counts (the replaced one's is paid into the discarded object).
            self._owed.pay(run_id, [index])
            self._forget_batches(run_id, index)
            self._segments[key] = segment
            self.runs.claim(run_id, owner, callers, peers)
            self.sizes.forget()
        return segment

    def _check_slot(self, key: tuple[str, int], replace: bool, owner, parameters: int) -> None:
        run_id, index = key
        if key in self._segments and not replace:
            raise AlreadyExists(f"run {run_id[:64]!r} already has segment {index} here")
        held = [(k[0], s.parameter_count) for k, s in self._segments.items() if k != key]
        owner_runs = self.runs.owned_by(owner)
        quota.check_load(self.limits, held, run_id, owner_runs, parameters, self.name)

    def export_segment(self, run_id: str, index: int) -> dict[str, torch.Tensor]:
        """The segment's weights, buffers and optimizer state as named tensors."""
        with self._lock:
            self._owed.pay(run_id, [index])
            segment = self._segment(run_id, index)
            state = {f"model.{k}": v for k, v in segment.module.state_dict().items()}
            state.update(
                {f"optim.{k}": v for k, v in optim_specs.export_state(segment.optimizer).items()}
            )
            return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

    def drop_segment(self, run_id: str, index: int) -> None:
        """Forget a segment and whatever batches it was part of."""
        with self._lock:
            self._owed.pay(run_id, [index])
            self._segment(run_id, index)
            self._remove(run_id, index)
            if not any(k[0] == run_id for k in self._segments):
                self.runs.forget(run_id)

    def drop_run(self, run_id: str) -> int:
        """Forget a whole run: its segments, batches in flight, work owed (not paid: no
        one will read its weights) and stored answers. Returns the segments dropped."""
        with self._lock:
            indices = [k[1] for k in self._segments if k[0] == run_id]
            self._owed.discard_run(run_id)
            for index in indices:
                self._remove(run_id, index)
            self.runs.forget(run_id)
            self.expected.forget(run_id)
            return len(indices)

    def _remove(self, run_id: str, index: int) -> None:
        del self._segments[(run_id, index)]
        self._forget_batches(run_id, index)
        self.sizes.forget()

    def _forget_batches(self, run_id: str, index: int) -> None:
        """Forget the batches in flight through a segment, and their stored answers."""
        for key in [k for k in self._pending if k[0] == run_id and index in k[1]]:
            del self._pending[key]
        self.replay.forget_segment(run_id, index)

    def drop_lapsed_runs(self) -> list[str]:
        """Drop every run whose lease lapsed (unused for limits.lease_seconds)."""
        lapsed = self.runs.lapsed()
        for run_id in lapsed:
            self.drop_run(run_id)
        return lapsed

    def segments(self) -> list[Segment]:
        """Hosted segments, ordered by run and index, with their owed work paid so that
        their weights are current."""
        with self._lock:
            self._owed.pay_all()
            return [self._segments[k] for k in sorted(self._segments)]

    def pending_count(self, run_id: str, index: int) -> int:
        """Batches run forward through this segment and not yet backward."""
        with self._lock:
            return sum(1 for key in self._pending if key[0] == run_id and index in key[1])

    def pending_batches(self, run_id: str) -> set[tuple]:
        """Keys (run, segments, batch id, micro-batch) of the run's batches awaiting
        Backward."""
        with self._lock:
            return {key for key in self._pending if key[0] == run_id}

    def discard_batches(self, run_id: str, batch_ids, keep=frozenset()) -> None:
        """Undo the Forwards of the run's batches with these ids that await Backward (but
        those in `keep`): forget them, restore the buffers they updated, and forget their
        stored answers, so that a retry runs them again. For the latest batches only."""
        with self._lock:
            for key in [k for k in self._pending if k[0] == run_id and k[2] in batch_ids]:
                if key in keep:
                    continue
                pending = self._pending.pop(key)
                chain = [self._segments.get((run_id, i)) for i in key[1]]
                if pending.buffers is not None and None not in chain:
                    restore_buffers(chain, pending.buffers)
                self.replay.forget(OpKey(run_id, OpKind.FORWARD, *key[1:]))

    # ---- the training path -----------------------------------------------------

    def forward(
        self,
        run_id: str,
        indices: list[int],
        batch_id: int,
        *,
        train: bool = True,
        input: torch.Tensor | None = None,
        data: tuple[str, list[int]] | None = None,
        loss: tuple[str, str, list[int]] | None = None,
        step: bool = False,
        want_output: bool = False,
        micro_batch: int = 0,
        loss_scale: float = 1.0,
    ) -> ForwardResult:
        """Run consecutive segments forward. With `loss`, also compute the loss against
        this worker's labels and backpropagate (and step, if asked) in the same call."""
        with self._lock:
            chain = self._chain(run_id, indices)
            key = (run_id, tuple(indices), batch_id, micro_batch)
            if train and loss is None:
                if key in self._pending:
                    raise FailedPrecondition(
                        f"batch {batch_name(key)} is already in flight through segments {indices}"
                    )
                if len(self._pending) >= self._pending_floor:  # near a cap: count them
                    runs = [k[0] for k in self._pending]
                    owner_runs = self.runs.owned_by(self.runs.owner(run_id))
                    quota.check_pending(self.limits, runs, run_id, owner_runs, self.name)
            x = inputs.forward_input(chain, input, data, self.dataset, self.limits)
            self.sizes.check(chain, x, train)
            x = x.to(self.device)
            target = None
            if loss is not None:
                target = inputs.labels(loss, x.shape[0], self.dataset, self.limits)
                target = target.to(self.device)
            saved = snapshot_buffers(chain)
            # Only a training forward with a loss touches gradients before it can fail;
            # gradients accumulated by earlier batches must survive a refused one.
            grads = snapshot_grads(chain) if train and loss is not None else None
            try:
                result = self._run_forward(
                    chain, key, x, data is None, train, target, loss, step, want_output, loss_scale
                )
            except Exception:
                restore_buffers(chain, saved)
                if grads is not None:
                    restore_grads(chain, grads)
                raise
            if train and loss is None:
                self._pending[key].buffers = saved
            return result

    def _run_forward(
        self, chain, key, x, needs_input_grad, train, target, loss, step, want_output, scale
    ):
        for segment in chain:
            if segment.module.training != train:
                segment.module.train(train)
        if not train:
            with torch.no_grad(), self._autocast():
                out = apply_chain(chain, x)
            out = self._leaving(out, x)
            result = ForwardResult(output=out if want_output or loss is None else None)
            if loss is not None:
                loss_name, _, _ = loss
                value = chain_loss(loss_name, out, target)
                result.loss = float(value)
                result.correct = count_correct(loss_name, out, target)
                result.count = int(out.shape[0])
            return result
        leaf = x.detach().requires_grad_(needs_input_grad)
        marks: list | None = [] if needs_input_grad else None  # only a deferred pass uses them
        with self._autocast():
            out = apply_chain(chain, leaf, marks)
        if loss is None:
            self._pending[key] = PendingBatch(leaf, out, marks)
            return ForwardResult(output=self._leaving(out.detach(), x))
        loss_name, _, _ = loss
        value = chain_loss(loss_name, out, target)
        loss_value = value.item()
        if not math.isfinite(loss_value):
            raise NumericalError(f"loss is {loss_value} at batch {key[2]}")
        # The input gradient first; the parameters' wait until it is out (settle). A
        # micro-batch backpropagates its share of a mean loss (LossSpec.scale).
        leaf = leaf if needs_input_grad else None
        scaled = value if scale == 1.0 else value * scale
        grad, owed = backward_chain(chain, scaled, None, leaf, marks, defer=not step)
        if grad is not None and not all_finite(grad):
            raise NumericalError(f"input gradient is not finite at batch {key[2]}")
        if owed is not None:
            self._owed.add(key, owed)
        if step:
            step_chain(chain)
        return ForwardResult(
            input_grad=grad,
            loss=loss_value,
            correct=count_correct(loss_name, out.detach(), target),
            count=int(out.shape[0]),
        )

    def _autocast(self):
        """Autocast for the segments' forward with --precision (a no-op without it)."""
        enabled = self.autocast is not None
        return torch.autocast(self.device.type, dtype=self.autocast, enabled=enabled)

    def _leaving(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """An output as it leaves this host: in the input's floating dtype under autocast,
        so that the next host (with or without autocast) gets what it expects."""
        if self.autocast is not None and x.is_floating_point() and out.dtype != x.dtype:
            return out.to(x.dtype)
        return out

    def backward(
        self,
        run_id: str,
        indices: list[int],
        batch_id: int,
        output_grad: torch.Tensor,
        step: bool,
        micro_batch: int = 0,
    ) -> torch.Tensor | None:
        """Backpropagate `output_grad` through the segments of an earlier Forward."""
        with self._lock:
            chain = self._chain(run_id, indices)
            key = (run_id, tuple(indices), batch_id, micro_batch)
            pending = self._pending.get(key)
            if pending is None:
                raise FailedPrecondition(
                    f"no Forward of batch {batch_name(key)} through segments {indices} "
                    "awaits Backward"
                )
            if self.autocast is not None and output_grad.dtype == pending.input.dtype:
                output_grad = output_grad.to(pending.output.dtype)  # sent in the input's dtype
            if output_grad.dtype != pending.output.dtype:
                raise InvalidArgument(
                    f"gradient dtype {output_grad.dtype} does not match output dtype "
                    f"{pending.output.dtype}"
                )
            if output_grad.shape != pending.output.shape:
                raise InvalidArgument(
                    f"gradient shape {list(output_grad.shape)} does not match output shape "
                    f"{list(pending.output.shape)}"
                )
            output_grad = output_grad.to(self.device)
            if not all_finite(output_grad):
                raise NumericalError(f"gradient for batch {batch_name(key)} holds NaN or Inf")
            input_grad, owed = None, None
            if pending.output.requires_grad:  # no graph: parameter-free chain on own data
                leaf = pending.input if pending.input.requires_grad else None
                input_grad, owed = backward_chain(
                    chain, pending.output, output_grad, leaf, pending.marks, defer=True, step=step
                )
            del self._pending[key]
            if owed is not None:
                self._owed.add(key, owed)
            elif step:
                step_chain(chain)
            return input_grad

    def settle(self, run_id: str, indices) -> None:
        """Pay what a backward pass through these segments put off (parameter gradients,
        step): called by whoever sent its answer, unless another use paid it first."""
        # Nothing owed, as after most ops: no lock to take. Read unlocked, yet what the
        # caller's own op owes was added by the caller's thread, so it is seen here.
        if not self._owed:
            return
        with self._lock:
            self._owed.pay(run_id, indices)

    def step(self, run_id: str, indices: list[int]) -> None:
        """Apply each segment's optimizer to its accumulated gradients."""
        with self._lock:
            chain = self._chain(run_id, indices)
            wanted = set(indices)
            if any(k[0] == run_id and wanted & set(k[1]) for k in self._pending):
                raise FailedPrecondition(
                    f"segments {indices} still await Backward; Step would use partial gradients"
                )
            step_chain(chain)

    # ---- helpers ---------------------------------------------------------------

    def _segment(self, run_id: str, index: int) -> Segment:
        segment = self._segments.get((run_id, index))
        if segment is None:
            raise NotFound(f"worker {self.name} hosts no segment {index} of run {run_id!r}")
        return segment

    def _chain(self, run_id: str, indices: list[int]) -> list[Segment]:
        check_run_id(run_id)
        self.runs.touch(run_id)
        self._owed.pay(run_id, indices)
        if not indices:
            raise InvalidArgument("no segments named")
        if any(b != a + 1 for a, b in zip(indices, indices[1:], strict=False)):
            raise InvalidArgument(f"segments {list(indices)} are not consecutive")
        return [self._segment(run_id, i) for i in indices]

    def dataset(self, name: str) -> Dataset:
        """A dataset this worker holds, by name."""
        dataset = self.datasets.get(name)
        if dataset is None:
            raise NotFound(f"worker {self.name} has no dataset {name!r}")
        return dataset
