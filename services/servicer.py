"""gRPC adapter over SegmentHost: decode requests, call the host, encode answers.

The only place where domain errors become status codes (see STATUS_CODES).
"""

from __future__ import annotations

import contextlib
import logging

import grpc

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
from splitnn.model import layers as layer_specs
from splitnn.model import optim as optim_specs
from splitnn.services import ops
from splitnn.services.driver import Driver
from splitnn.services.segment_host import SegmentHost
from splitnn.transport.client import WorkerError
from splitnn.v1 import worker_pb2, worker_pb2_grpc
from splitnn.wire import codec

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
    except WorkerError as err:  # a peer this worker called (when driving) failed
        # ABORTED, not the peer's code: the caller must not retry the whole Drive
        # for a peer that this worker has already retried.
        context.abort(grpc.StatusCode.ABORTED, str(err))
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


_KIND_OF = {
    worker_pb2.ForwardRequest: "forward",
    worker_pb2.BackwardRequest: "backward",
    worker_pb2.StepRequest: "step",
}


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    """Adapts WorkerService RPCs to a SegmentHost."""

    def __init__(
        self, host: SegmentHost, chunk_bytes: int = codec.DEFAULT_CHUNK_BYTES, driver=None
    ):
        self.host = host
        self.chunk_bytes = chunk_bytes
        self.driver = driver if driver is not None else Driver(host)
        # Traffic of this worker (approximate under concurrency; for reports).
        self.bytes_received = 0
        self.bytes_sent = 0

    # ---- segment lifecycle -----------------------------------------------------

    def _count_in(self, messages):
        for message in messages:
            self.bytes_received += message.ByteSize()
            yield message

    def LoadSegment(self, request_iterator, context):
        with _errors_to_status(context):
            first, blob = None, codec.BlobAssembler(self.host.limits.max_tensor_bytes)
            for message in self._count_in(request_iterator):
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
            response = worker_pb2.ExportSegmentResponse(state=chunk)
            self.bytes_sent += response.ByteSize()
            yield response

    def DropSegment(self, request, context):
        with _errors_to_status(context):
            self.host.drop_segment(request.run_id, request.index)
            return worker_pb2.DropSegmentResponse()

    def GetStatus(self, request, context):
        response = worker_pb2.GetStatusResponse(
            name=self.host.name, bytes_received=self.bytes_received, bytes_sent=self.bytes_sent
        )
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
            yield from self._serve("forward", request_iterator, _unwrap_forward)

    def Backward(self, request_iterator, context):
        with _errors_to_status(context):
            yield from self._serve("backward", request_iterator, _unwrap_backward)

    def Step(self, request, context):
        with _errors_to_status(context):
            head, _, _ = ops.apply("step", self.host, request)
            return head

    def Exchange(self, request_iterator, context):
        with _errors_to_status(context):
            yield from self._serve(None, request_iterator, _unwrap_exchange)

    def _serve(self, kind: str | None, request_iterator, unwrap):
        """Apply a stream's ops in order and answer each (inside ExchangeResponses when
        `kind` is None). A backward pass sends its input gradient first: the work it put
        off (parameter gradients, step) runs once the answer is out, while the next
        host works; the stream's next op waits for it."""
        max_bytes = self.host.limits.max_tensor_bytes
        for op, tensor in _ops(self._count_in(request_iterator), unwrap, max_bytes):
            op_kind = kind or _KIND_OF[type(op)]
            answer = ops.apply(op_kind, self.host, op, tensor)
            try:
                yield from self._answer(answer, wrap_as=None if kind else op_kind)
            finally:
                self.host.settle(op.run_id, op.segments)

    def Drive(self, request, context):
        with _errors_to_status(context):
            yield from self.driver.drive(request, context)

    def _answer(self, answer, wrap_as: str | None = None):
        """Response messages for an applied op: the head, then the tensor in chunks;
        with `wrap_as`, each inside an ExchangeResponse under that op kind. Built in
        place, so the head (which the replay cache may hold) is never modified and the
        tensor's bytes are copied once."""
        head, tensor, field = answer
        chunks = [None] if tensor is None else codec.encode(tensor, self.chunk_bytes)
        for i, chunk in enumerate(chunks):
            if wrap_as is None:
                message = part = type(head)()
            else:
                message = worker_pb2.ExchangeResponse()
                part = getattr(message, wrap_as)
            if i == 0:
                part.CopyFrom(head)
            else:
                part.batch_id = head.batch_id
            if chunk is not None:
                getattr(part, field).CopyFrom(chunk)
            self.bytes_sent += message.ByteSize()
            yield message
