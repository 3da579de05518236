"""Training ops applied to a SegmentHost, once each.

Shared by the gRPC servicer (ops from the network) and the in-process client a
driving worker uses for its own stages, so both paths run the same code. How
ops become messages is splitnn.wire.ops; this module only applies them.
"""

from __future__ import annotations

import math
import time

import torch

from splitnn.errors import FailedPrecondition, InvalidArgument, reply_code
from splitnn.model.losses import LOSS_NAMES
from splitnn.services.segment_host import SegmentHost
from splitnn.v1 import worker_pb2
from splitnn.wire.ops import Answer, Op, OpKind

# ForwardMode values: UNSPECIFIED (a message that sets none) trains, as TRAIN does.
_MODES: dict[int, bool] = {
    worker_pb2.FORWARD_MODE_UNSPECIFIED: True,
    worker_pb2.FORWARD_MODE_TRAIN: True,
    worker_pb2.FORWARD_MODE_EVAL: False,
}


def forward_mode_trains(mode: int) -> bool:
    """Whether a ForwardMode trains; INVALID_ARGUMENT for a value the enum lacks
    (proto3 enums are open: any int32 arrives)."""
    if mode not in _MODES:
        raise InvalidArgument(f"unknown forward mode {mode}")
    return _MODES[mode]


def loss_scale(head: worker_pb2.ForwardRequest) -> float:
    """The factor a forward's loss is backpropagated with (LossSpec.scale; 0 means 1)."""
    scale = head.loss.scale if head.HasField("loss") else 0.0
    if scale == 0.0:
        return 1.0
    if not math.isfinite(scale) or not 0.0 < scale <= 1.0:
        raise InvalidArgument(f"loss scale {scale} is not in (0, 1]")
    return scale


def apply_forward(host: SegmentHost, op: Op) -> Answer:
    """Run a forward op; its answer carries the input gradient after a loss in
    training, else the output (one tensor at most)."""
    head = op.head
    assert isinstance(head, worker_pb2.ForwardRequest)
    train = forward_mode_trains(head.mode)
    data = (head.data.dataset, list(head.data.indices)) if head.HasField("data") else None
    loss = None
    if head.HasField("loss"):
        name = LOSS_NAMES.get(head.loss.kind)
        if name is None:
            raise InvalidArgument(f"unknown loss kind {head.loss.kind}")
        loss = (name, head.loss.dataset, list(head.loss.indices))
    result = host.forward(
        head.run_id,
        list(head.segments),
        head.batch_id,
        train=train,
        input=op.tensor,
        data=data,
        loss=loss,
        step=head.step,
        want_output=head.want_output,
        micro_batch=head.micro_batch,
        loss_scale=loss_scale(head),
    )
    reply = worker_pb2.ForwardResponse(batch_id=head.batch_id, micro_batch=head.micro_batch)
    if result.loss is not None:
        reply.loss.loss, reply.loss.correct, reply.loss.count = (
            result.loss,
            result.correct,
            result.count,
        )
    if result.input_grad is not None:
        return Answer(reply, result.input_grad, "input_grad")
    return Answer(reply, result.output, "output")


def apply_backward(host: SegmentHost, op: Op) -> Answer:
    """Run a backward op; its answer carries the input gradient, if there is one."""
    head = op.head
    assert isinstance(head, worker_pb2.BackwardRequest)
    if op.tensor is None:
        raise InvalidArgument("Backward needs an output gradient")
    grad = host.backward(
        head.run_id, list(head.segments), head.batch_id, op.tensor, head.step, head.micro_batch
    )
    reply = worker_pb2.BackwardResponse(batch_id=head.batch_id, micro_batch=head.micro_batch)
    return Answer(reply, grad, "input_grad")


def apply_step(host: SegmentHost, op: Op) -> Answer:
    """Run a step op; its answer carries no tensor."""
    head = op.head
    host.step(head.run_id, list(head.segments))
    return Answer(worker_pb2.StepResponse(batch_id=head.batch_id, micro_batch=head.micro_batch))


_APPLY = {OpKind.FORWARD: apply_forward, OpKind.BACKWARD: apply_backward, OpKind.STEP: apply_step}


def _replayable(op: Op) -> bool:
    # Evaluation keeps no state, so repeating it is harmless; batch id 0 means "no id".
    head = op.head
    if head.batch_id == 0:
        return False
    return (
        not isinstance(head, worker_pb2.ForwardRequest) or head.mode != worker_pb2.FORWARD_MODE_EVAL
    )


def same_op(a: Op, b: Op) -> bool:
    """Whether two ops have the same content, head and tensor bytes both: a retry repeats
    its op exactly, so another op under the same OpKey is told apart from a retry.
    Compared only when an OpKey comes again, so no op pays for it on the way in."""
    if a.kind is not b.kind:
        return False
    if a.head.SerializeToString(deterministic=True) != b.head.SerializeToString(deterministic=True):
        return False
    if a.tensor is None or b.tensor is None:
        return a.tensor is None and b.tensor is None
    return (
        a.tensor.dtype == b.tensor.dtype
        and a.tensor.shape == b.tensor.shape
        and bool(torch.equal(a.tensor, b.tensor))
    )


def apply(host: SegmentHost, op: Op, replay: bool = True, chain=None) -> Answer:
    """`_apply`, counted and timed by the host's meter (metrics) if it has one: the ops
    callers send and those a driving worker runs on its own stages alike."""
    meter = host.meter
    if meter is None:
        return _apply(host, op, replay, chain)
    started = time.perf_counter()
    try:
        answer = _apply(host, op, replay, chain)
    except BaseException as err:
        meter.op(op.kind.value, reply_code(err).name, 0.0)
        raise
    meter.op(op.kind.value, "OK", time.perf_counter() - started)
    return answer


def _apply(host: SegmentHost, op: Op, replay: bool, chain) -> Answer:
    """Apply an op once: a repeat of a recent op with the same OpKey and content (a retry
    after a lost answer) gets the stored answer instead of running again; an op under a
    recent OpKey with other content is refused, and changes nothing. `replay` False:
    the op comes from this process (a driving worker's own stages), whose answers are
    never lost, so none is kept. `chain` (a ChainForwarder) runs chained forwards."""
    if not replay or not _replayable(op):
        return _apply_once(host, op, chain)
    key = op.key
    stored = host.replay.get(key)
    if stored is not None:
        first, answer = stored
        if not same_op(first, op):
            raise FailedPrecondition(
                f"batch {key.batch_id}: a {op.kind.value} op with this id through segments "
                f"{list(key.segments)} was already applied, with other content"
            )
        host.replay.count_replay()
        return answer
    answer = _apply_once(host, op, chain)
    host.replay.put(key, op, answer)
    return answer


def _apply_once(host: SegmentHost, op: Op, chain) -> Answer:
    if isinstance(op.head, worker_pb2.ForwardRequest) and op.head.chain:
        if chain is None:
            raise FailedPrecondition("this path does not forward along a chain")
        return chain.apply(op)
    return _APPLY[op.kind](host, op)
