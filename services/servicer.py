"""gRPC adapter over SegmentHost: identify the caller, apply the access policy, decode
requests, call the host, encode answers.

The only place where domain errors become status codes, by the one table beside
them (splitnn.errors.STATUS_CODES), and where every RPC meets the policy of
splitnn.security.access before it touches anything.
"""

from __future__ import annotations

import contextlib
import logging
import time

import grpc

from splitnn.errors import InvalidArgument, SplitnnError, WorkerError, reply_code, status_code
from splitnn.model import layers as layer_specs
from splitnn.model import optim as optim_specs
from splitnn.security.access import AccessPolicy, Caller
from splitnn.services import ops
from splitnn.services.chain_forward import ChainForwarder, PeerPool
from splitnn.services.driver import Driver
from splitnn.services.guard import CallSlots, IdleWatch
from splitnn.services.segment_host import SegmentHost
from splitnn.v1 import worker_pb2, worker_pb2_grpc
from splitnn.wire import codec
from splitnn.wire.ops import Op, OpKind, ops_from_proto, reply_to_proto, unwrap_exchange

log = logging.getLogger("splitnn.worker")


def error_status(err: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status code and details a call ends with on `err`, raised while serving it;
    None for what must propagate as it is (gRPC's own abort, an exit). Call it in the
    `except` block: an unexpected error is logged with its traceback."""
    if isinstance(err, WorkerError):  # a peer this worker called (when driving) failed
        return reply_code(err), _details(str(err))
    if isinstance(err, SplitnnError):
        return status_code(err), _details(f"{type(err).__name__}: {err}")
    if isinstance(err, grpc.RpcError) or not isinstance(err, Exception):
        return None
    if type(err).__name__ == "_AbortError":
        return None
    log.exception("unexpected error")  # keep serving; say what broke
    return grpc.StatusCode.INTERNAL, _details(f"internal error: {type(err).__name__}")


@contextlib.contextmanager
def _errors_to_status(context: grpc.ServicerContext):
    try:
        yield
    except Exception as err:
        status = error_status(err)
        if status is None:
            raise
        context.abort(*status)


def _status_name(err: BaseException, context) -> str:
    """The gRPC status a call ends with on `err`, by name (for metrics)."""
    if isinstance(err, GeneratorExit):  # the caller went away mid-stream
        return "CANCELLED"
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):  # what context.abort set
        return code.name
    return reply_code(err).name


# Error details are cut to this: a request's own strings (a dataset name, a run id)
# can be long, and gRPC refuses metadata past its limit with a useless error instead.
MAX_DETAILS = 1024


def _details(text: str) -> str:
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= MAX_DETAILS:
        return text
    return encoded[: MAX_DETAILS - 3].decode("utf-8", "ignore") + "..."


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    """Adapts WorkerService RPCs to a SegmentHost, for callers the policy lets through."""

    def __init__(
        self,
        host: SegmentHost,
        chunk_bytes: int = codec.DEFAULT_CHUNK_BYTES,
        driver=None,
        access: AccessPolicy | None = None,
        slots: CallSlots | None = None,
        idle: IdleWatch | None = None,
        peers: PeerPool | None = None,
    ):
        self.host = host
        self.chunk_bytes = chunk_bytes
        self.driver = driver if driver is not None else Driver(host)
        self.peers = peers or PeerPool()
        self.chain = ChainForwarder(host, self.peers.call)
        self.access = access or AccessPolicy()
        self.slots = slots or CallSlots()
        self.idle = idle or IdleWatch()
        # Traffic of this worker (approximate under concurrency; for reports).
        self.bytes_received = 0
        self.bytes_sent = 0
        self.started = time.time()
        # A services.metrics.WorkerMetrics (--metrics-port, see observe), or None.
        self.metrics = None

    def observe(self, metrics) -> None:
        """Count this worker's RPCs, and every op its host applies, into `metrics`."""
        self.metrics = self.host.meter = metrics

    @contextlib.contextmanager
    def _call(self, rpc: str, context):
        """Every RPC: errors to status codes, who calls, may it call `rpc`, and one of
        its identity's call slots for as long as the call lasts."""
        status = "OK"
        try:
            with _errors_to_status(context):
                caller = self.access.identify(context)
                self.access.check_rpc(caller, rpc)
                with self.slots.hold(caller.name):
                    yield caller
        except BaseException as err:
            status = _status_name(err, context)
            raise
        finally:
            if self.metrics is not None:
                self.metrics.rpc(rpc, status)

    def _incoming(self, requests, context):
        """A request stream, counted and watched for silence."""
        for message in self.idle.messages(context, requests):
            self.bytes_received += message.ByteSize()
            yield message

    def _check_run(self, caller: Caller, run_id: str) -> None:
        self.access.check_run(caller, run_id, self.host.runs.get(run_id))

    # ---- segment lifecycle -----------------------------------------------------

    def LoadSegment(self, request_iterator, context):
        with self._call("LoadSegment", context) as caller:
            first, blob = None, codec.BlobAssembler(self.host.limits.max_tensor_bytes)
            for message in self._incoming(request_iterator, context):
                if first is None:
                    first = message
                    if not message.HasField("spec"):
                        raise InvalidArgument("the first LoadSegment message must carry the spec")
                    self._check_run(caller, message.run_id)
                if message.HasField("state"):
                    blob.add(message.state)
            if first is None:
                raise InvalidArgument("empty LoadSegment stream")
            spec = first.spec
            layers = [layer_specs.layer_from_proto(layer) for layer in spec.layers]
            optimizer_spec = optim_specs.from_proto(spec.optimizer)
            data = blob.blob()
            state = codec.decode_state(data) if data else None
            self._check_run(caller, first.run_id)  # again: another may have created it
            segment = self.host.load_segment(
                first.run_id,
                spec.index,
                layers,
                optimizer_spec,
                state,
                replace=first.replace,
                owner=caller.name,
                callers=list(first.callers),
                peers={p.host: (p.address, p.server_name, p.data_address) for p in first.peers},
            )
            return worker_pb2.LoadSegmentResponse(
                index=segment.index, parameter_count=segment.parameter_count
            )

    def ExportSegment(self, request, context):
        with self._call("ExportSegment", context) as caller:
            self._check_run(caller, request.run_id)
            state = self.host.export_segment(request.run_id, request.index)
            blob = codec.encode_state(state)
        for chunk in codec.blob_chunks(blob, self.chunk_bytes):
            response = worker_pb2.ExportSegmentResponse(state=chunk)
            self.bytes_sent += response.ByteSize()
            yield response

    def DropSegment(self, request, context):
        with self._call("DropSegment", context) as caller:
            self._check_run(caller, request.run_id)
            self.host.drop_segment(request.run_id, request.index)
            return worker_pb2.DropSegmentResponse()

    def GetStatus(self, request, context):
        with self._call("GetStatus", context) as caller:
            return self._status(caller)

    def _status(self, caller: Caller) -> worker_pb2.GetStatusResponse:
        """What this worker serves, and of the runs only the caller's own."""
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
        mine = self.host.runs.owned_by(caller.name)
        for segment in self.host.segments():
            if segment.run_id not in mine:
                continue
            response.segments.add(
                run_id=segment.run_id,
                index=segment.index,
                parameter_count=segment.parameter_count,
                pending_batches=self.host.pending_count(segment.run_id, segment.index),
            )
        return response

    # ---- training path ---------------------------------------------------------

    def Forward(self, request_iterator, context):
        with self._call("Forward", context) as caller:
            heads = self._incoming(request_iterator, context)
            yield from self._serve(caller, heads, OpKind.FORWARD)

    def Backward(self, request_iterator, context):
        with self._call("Backward", context) as caller:
            heads = self._incoming(request_iterator, context)
            yield from self._serve(caller, heads, OpKind.BACKWARD)

    def Step(self, request, context):
        with self._call("Step", context) as caller:
            op = Op(OpKind.STEP, request)
            self._check_op(caller, op)
            return ops.apply(self.host, op).head

    def Exchange(self, request_iterator, context):
        with self._call("Exchange", context) as caller:
            heads = (unwrap_exchange(m) for m in self._incoming(request_iterator, context))
            yield from self._serve(caller, heads, None)

    def _check_op(self, caller: Caller, op: Op) -> None:
        self.access.check_op(caller, op, self.host.runs.get(op.head.run_id))

    def serve_exchange(self, caller: Caller, requests, chunk_bytes: int):
        """The Exchange of a caller already identified and admitted (the data port):
        ExchangeRequests in, ExchangeResponses out, chunked at `chunk_bytes`."""
        heads = (unwrap_exchange(m) for m in requests)
        return self._serve(caller, heads, None, chunk_bytes)

    def _serve(self, caller: Caller, heads, kind: OpKind | None, chunk_bytes: int | None = None):
        """Apply a stream's ops in order and answer each: inside ExchangeResponses when
        `kind` is None (Exchange), else as bare responses of that kind. A backward pass
        sends its input gradient first: the work it put off (parameter gradients,
        step) runs once the answer is out, while the next host works; the stream's
        next op waits for it."""
        max_bytes = self.host.limits.max_tensor_bytes
        for op in ops_from_proto(heads, max_bytes, kind):
            self._check_op(caller, op)
            # The chain's last hop into this worker's own stage runs the head its
            # driver armed (with the loss over its labels), checked above as sent.
            op = self.host.expected.resolve(op)
            answer = ops.apply(self.host, op, chain=self.chain)
            try:
                wire = getattr(op.head, "wire", 0)
                replies = reply_to_proto(
                    op.kind,
                    answer,
                    chunk_bytes or self.chunk_bytes,
                    kind is None,
                    wire,
                    framed=True,
                )
                for message in replies:
                    self.bytes_sent += message.ByteSize()
                    yield message
            finally:
                self.host.settle(op.head.run_id, op.head.segments)

    def Drive(self, request, context):
        with self._call("Drive", context) as caller:
            self._check_run(caller, request.run_id)
            yield from self.driver.drive(request, context)
