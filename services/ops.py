"""Training-path ops as protobuf requests applied to a SegmentHost.

Shared by the gRPC servicer (ops from the network) and the in-process client
a driving worker uses for its own stages, so both paths run the same code.
"""

from __future__ import annotations

import torch

from splitnn.errors import InvalidArgument
from splitnn.model.losses import LOSS_NAMES
from splitnn.services.segment_host import SegmentHost
from splitnn.v1 import worker_pb2


def apply_forward(host: SegmentHost, op: worker_pb2.ForwardRequest, tensor: torch.Tensor | None):
    """Run a ForwardRequest; return (response head, tensor to send back, its field)."""
    train = op.mode != worker_pb2.FORWARD_MODE_EVAL
    data = (op.data.dataset, list(op.data.indices)) if op.HasField("data") else None
    loss = None
    if op.HasField("loss"):
        name = LOSS_NAMES.get(op.loss.kind)
        if name is None:
            raise InvalidArgument(f"unknown loss kind {op.loss.kind}")
        loss = (name, op.loss.dataset, list(op.loss.indices))
    result = host.forward(
        op.run_id,
        list(op.segments),
        op.batch_id,
        train=train,
        input=tensor,
        data=data,
        loss=loss,
        step=op.step,
        want_output=op.want_output,
    )
    head = worker_pb2.ForwardResponse(batch_id=op.batch_id)
    if result.loss is not None:
        head.loss.loss, head.loss.correct, head.loss.count = (
            result.loss,
            result.correct,
            result.count,
        )
    # One tensor at most: the input gradient after a loss in training, else the output.
    if result.input_grad is not None:
        return head, result.input_grad, "input_grad"
    return head, result.output, "output"


def apply_backward(host: SegmentHost, op: worker_pb2.BackwardRequest, tensor: torch.Tensor | None):
    """Run a BackwardRequest; return (response head, input gradient or None, its field)."""
    if tensor is None:
        raise InvalidArgument("Backward needs an output gradient")
    grad = host.backward(op.run_id, list(op.segments), op.batch_id, tensor, op.step)
    return worker_pb2.BackwardResponse(batch_id=op.batch_id), grad, "input_grad"


def apply_step(host: SegmentHost, op: worker_pb2.StepRequest, tensor=None):
    """Run a StepRequest; return (response head, None, "")."""
    host.step(op.run_id, list(op.segments))
    return worker_pb2.StepResponse(batch_id=op.batch_id), None, ""


_APPLY = {"forward": apply_forward, "backward": apply_backward, "step": apply_step}


def _replayable(kind: str, op) -> bool:
    # Evaluation keeps no state, so repeating it is harmless; batch id 0 means "no id".
    if op.batch_id == 0:
        return False
    return kind != "forward" or op.mode != worker_pb2.FORWARD_MODE_EVAL


def apply(kind: str, host: SegmentHost, op, tensor=None):
    """Apply an op once: a repeat of the latest op with the same ids (a retry after a
    lost answer) gets the stored answer instead of running again."""
    if not _replayable(kind, op):
        return _APPLY[kind](host, op, tensor)
    key = (op.run_id, kind, tuple(op.segments))
    answer = host.replay.get(key, op.batch_id)
    if answer is None:
        answer = _APPLY[kind](host, op, tensor)
        host.replay.put(key, op.batch_id, answer)
    return answer
