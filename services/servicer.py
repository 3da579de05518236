"""gRPC adapter over SegmentHost: decode requests, call the host, encode answers.

The only place where domain errors become status codes, by the one table beside
them (splitnn.errors.STATUS_CODES).
"""

from __future__ import annotations

import contextlib
import logging

import grpc

from splitnn.errors import InvalidArgument, SplitnnError, WorkerError, status_code
from splitnn.model import layers as layer_specs
from splitnn.model import optim as optim_specs
from splitnn.services import ops
from splitnn.services.driver import Driver
from splitnn.services.segment_host import SegmentHost
from splitnn.v1 import worker_pb2, worker_pb2_grpc
from splitnn.wire import codec
from splitnn.wire.ops import Op, OpKind, ops_from_proto, reply_to_proto, unwrap_exchange

log = logging.getLogger("splitnn.worker")


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
            yield from self._serve(self._count_in(request_iterator), OpKind.FORWARD)

    def Backward(self, request_iterator, context):
        with _errors_to_status(context):
            yield from self._serve(self._count_in(request_iterator), OpKind.BACKWARD)

    def Step(self, request, context):
        with _errors_to_status(context):
            return ops.apply(self.host, Op(OpKind.STEP, request)).head

    def Exchange(self, request_iterator, context):
        with _errors_to_status(context):
            heads = (unwrap_exchange(m) for m in self._count_in(request_iterator))
            yield from self._serve(heads, None)

    def _serve(self, heads, kind: OpKind | None):
        """Apply a stream's ops in order and answer each: inside ExchangeResponses when
        `kind` is None (Exchange), else as bare responses of that kind. A backward pass
        sends its input gradient first: the work it put off (parameter gradients,
        step) runs once the answer is out, while the next host works; the stream's
        next op waits for it."""
        max_bytes = self.host.limits.max_tensor_bytes
        for op in ops_from_proto(heads, max_bytes, kind):
            answer = ops.apply(self.host, op)
            try:
                for message in reply_to_proto(op.kind, answer, self.chunk_bytes, kind is None):
                    self.bytes_sent += message.ByteSize()
                    yield message
            finally:
                self.host.settle(op.head.run_id, op.head.segments)

    def Drive(self, request, context):
        with _errors_to_status(context):
            yield from self.driver.drive(request, context)
