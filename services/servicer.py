"""gRPC adapter over SegmentHost: decode requests, call the host, encode answers.

The only place where domain errors become status codes (see STATUS_CODES).
"""

from __future__ import annotations

import contextlib
import logging

import grpc

from services.segment_host import ForwardResult, SegmentHost
from splitnn import codec
from splitnn import layers as layer_specs
from splitnn import optim as optim_specs
from splitnn.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NumericalError,
    PermissionDenied,
    ResourceExhausted,
    SplitnnError,
    Unauthenticated,
)
from splitnn.losses import LOSS_NAMES
from splitnn.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger("splitnn.worker")

STATUS_CODES = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    NumericalError: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}


def status_code(err: Exception) -> grpc.StatusCode:
    """The status code a domain error maps to (INTERNAL for anything unexpected)."""
    for kind in type(err).__mro__:
        if kind in STATUS_CODES:
            return STATUS_CODES[kind]
    return grpc.StatusCode.INTERNAL


@contextlib.contextmanager
def _errors_to_status(context: grpc.ServicerContext):
    try:
        yield
    except SplitnnError as err:
        context.abort(status_code(err), f"{type(err).__name__}: {err}")
    except grpc.RpcError:
        raise
    except Exception as err:  # keep serving; say what broke
        if type(err).__name__ == "_AbortError" or isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        log.exception("unexpected error")
        context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}: {err}")


def _ops(requests, unwrap, max_bytes):
    """Group a request stream into whole ops, assembling chunked tensors.

    `unwrap(msg)` gives (op, tensor field name or None). A tensor split into n
    chunks arrives as n messages of the same op kind, the first with all fields.
    """
    head, field, assembler = None, None, None
    for message in requests:
        op, tensor_field = unwrap(message)
        if head is None:
            if tensor_field is None or not op.HasField(tensor_field):
                yield op, None
                continue
            head, field, assembler = op, tensor_field, codec.TensorAssembler(max_bytes)
        elif type(op) is not type(head) or not op.HasField(field):
            raise InvalidArgument("a new op arrived before the previous tensor's last chunk")
        tensor = assembler.add(getattr(op, field))
        if tensor is not None:
            yield head, tensor
            head = None
    if head is not None:
        raise InvalidArgument("stream ended before the tensor's last chunk")


def _chunked(make, field: str, tensor, first: dict, chunk_bytes: int):
    """Response messages for an op: the first carries `first`, each carries a chunk."""
    if tensor is None:
        yield make(**first)
        return
    for i, chunk in enumerate(codec.encode(tensor, chunk_bytes)):
        fields = dict(first) if i == 0 else {"batch_id": first.get("batch_id", 0)}
        fields[field] = chunk
        yield make(**fields)


def _unwrap_forward(msg):
    return msg, "input"


def _unwrap_backward(msg):
    return msg, "output_grad"


def _unwrap_exchange(msg):
    which = msg.WhichOneof("op")
    if which == "forward":
        return msg.forward, "input"
    if which == "backward":
        return msg.backward, "output_grad"
    if which == "step":
        return msg.step, None
    raise InvalidArgument("Exchange message carries no op")


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    """Adapts WorkerService RPCs to a SegmentHost."""

    def __init__(self, host: SegmentHost, chunk_bytes: int = codec.DEFAULT_CHUNK_BYTES):
        self.host = host
        self.chunk_bytes = chunk_bytes

    # ---- segment lifecycle -----------------------------------------------------

    def LoadSegment(self, request_iterator, context):
        with _errors_to_status(context):
            first, blob = None, codec.BlobAssembler(self.host.limits.max_tensor_bytes)
            for message in request_iterator:
                if first is None:
                    first = message
                    if not message.HasField("spec"):
                        raise InvalidArgument("the first LoadSegment message must carry the spec")
                if message.HasField("state"):
                    blob.add(message.state)
            if first is None:
                raise InvalidArgument("empty LoadSegment stream")
            spec = first.spec
            layers = [layer_specs.layer_from_proto(layer) for layer in spec.layers]
            optimizer_spec = optim_specs.from_proto(spec.optimizer)
            data = blob.blob()
            state = codec.decode_state(data) if data else None
            segment = self.host.load_segment(
                first.run_id, spec.index, layers, optimizer_spec, state, replace=first.replace
            )
            return worker_pb2.LoadSegmentResponse(
                index=segment.index, parameter_count=segment.parameter_count
            )

    def ExportSegment(self, request, context):
        with _errors_to_status(context):
            state = self.host.export_segment(request.run_id, request.index)
            blob = codec.encode_state(state)
        for chunk in codec.blob_chunks(blob, self.chunk_bytes):
            yield worker_pb2.ExportSegmentResponse(state=chunk)

    def DropSegment(self, request, context):
        with _errors_to_status(context):
            self.host.drop_segment(request.run_id, request.index)
            return worker_pb2.DropSegmentResponse()

    def GetStatus(self, request, context):
        response = worker_pb2.GetStatusResponse(name=self.host.name)
        for name, dataset in sorted(self.host.datasets.items()):
            response.datasets.add(
                name=name,
                rows=dataset.rows,
                x_shape=list(dataset.x.shape[1:]),
                x_dtype=str(dataset.x.dtype).removeprefix("torch."),
                y_dtype=str(dataset.y.dtype).removeprefix("torch."),
            )
        for segment in self.host.segments():
            response.segments.add(
                run_id=segment.run_id,
                index=segment.index,
                parameter_count=segment.parameter_count,
                pending_batches=self.host.pending_count(segment.run_id, segment.index),
            )
        return response

    # ---- training path ---------------------------------------------------------

    def Forward(self, request_iterator, context):
        with _errors_to_status(context):
            max_bytes = self.host.limits.max_tensor_bytes
            for op, tensor in _ops(request_iterator, _unwrap_forward, max_bytes):
                yield from self._forward(op, tensor)

    def Backward(self, request_iterator, context):
        with _errors_to_status(context):
            max_bytes = self.host.limits.max_tensor_bytes
            for op, tensor in _ops(request_iterator, _unwrap_backward, max_bytes):
                yield from self._backward(op, tensor)

    def Step(self, request, context):
        with _errors_to_status(context):
            self.host.step(request.run_id, list(request.segments))
            return worker_pb2.StepResponse(batch_id=request.batch_id)

    def Exchange(self, request_iterator, context):
        with _errors_to_status(context):
            max_bytes = self.host.limits.max_tensor_bytes
            for op, tensor in _ops(request_iterator, _unwrap_exchange, max_bytes):
                if isinstance(op, worker_pb2.ForwardRequest):
                    for r in self._forward(op, tensor):
                        yield worker_pb2.ExchangeResponse(forward=r)
                elif isinstance(op, worker_pb2.BackwardRequest):
                    for r in self._backward(op, tensor):
                        yield worker_pb2.ExchangeResponse(backward=r)
                else:
                    self.host.step(op.run_id, list(op.segments))
                    yield worker_pb2.ExchangeResponse(
                        step=worker_pb2.StepResponse(batch_id=op.batch_id)
                    )

    def _forward(self, op: worker_pb2.ForwardRequest, tensor):
        train = op.mode != worker_pb2.FORWARD_MODE_EVAL
        data = (op.data.dataset, list(op.data.indices)) if op.HasField("data") else None
        loss = None
        if op.HasField("loss"):
            name = LOSS_NAMES.get(op.loss.kind)
            if name is None:
                raise InvalidArgument(f"unknown loss kind {op.loss.kind}")
            loss = (name, op.loss.dataset, list(op.loss.indices))
        result: ForwardResult = self.host.forward(
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
        first: dict = {"batch_id": op.batch_id}
        if result.loss is not None:
            first["loss"] = worker_pb2.LossResult(
                loss=result.loss, correct=result.correct, count=result.count
            )
        # One tensor at most: the input gradient after a loss in training, else the output.
        tensor, field = (
            (result.input_grad, "input_grad")
            if result.input_grad is not None
            else (result.output, "output")
        )
        yield from _chunked(worker_pb2.ForwardResponse, field, tensor, first, self.chunk_bytes)

    def _backward(self, op: worker_pb2.BackwardRequest, tensor):
        if tensor is None:
            raise InvalidArgument("Backward needs an output gradient")
        grad = self.host.backward(op.run_id, list(op.segments), op.batch_id, tensor, op.step)
        yield from _chunked(
            worker_pb2.BackwardResponse,
            "input_grad",
            grad,
            {"batch_id": op.batch_id},
            self.chunk_bytes,
        )
