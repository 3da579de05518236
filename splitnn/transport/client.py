"""A client for one worker: segment lifecycle calls and a long-lived Exchange stream.

The training path keeps one Exchange stream open per worker. Ops are sent as
soon as they are known and answered in order, so an op whose answer nobody
waits for (the last Backward of a step) overlaps with the next one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Any

import grpc
import torch

from splitnn.errors import WorkerError
from splitnn.model import layers as layer_specs
from splitnn.model import optim as optim_specs
from splitnn.transport.channels import create_channel
from splitnn.transport.stream import OrderedStream
from splitnn.transport.watchdog import Watchdog
from splitnn.v1 import worker_pb2, worker_pb2_grpc
from splitnn.wire import codec, lift
from splitnn.wire.ops import Op, OpKind, Reply, ReplyAssembler, op_to_proto

log = logging.getLogger("splitnn.transport.client")

DEFAULT_TIMEOUT = 60.0
_KEEPALIVE = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

# The training stream: tensor bytes framed into requests and lifted out of answers
# (splitnn.wire.lift); both clients call it so.
EXCHANGE = "/splitnn.v1.WorkerService/Exchange"
FRAME_REQUEST = lift.Framer(worker_pb2.ExchangeRequest)
PARSE_RESPONSE = lift.Parser(worker_pb2.ExchangeResponse)


class RetryTally:
    """Calls retried by this process, by call name (a worker's metrics export them)."""

    def __init__(self):
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, call: str) -> None:
        with self._lock:
            self._counts[call] = self._counts.get(call, 0) + 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


RETRIES = RetryTally()


class PeerSettings:
    """What both clients of a worker (blocking and event-loop) keep: who the worker
    is, and how long calls to it wait and how they are retried."""

    def __init__(
        self,
        name: str,
        address: str,
        timeout: float = DEFAULT_TIMEOUT,
        chunk_bytes: int = codec.DEFAULT_CHUNK_BYTES,
        retries: int = 5,
        retry_seconds: float = 20.0,
        backoff: float = 0.1,
        metadata=(),
        server_name: str | None = None,
    ):
        self.name = name
        self.address = address
        # The name our TLS check expects of the worker, when not `name` (a driving
        # worker is told it, to check the same name).
        self.server_name = server_name
        # Where the worker's data port listens, when the driver is to use it (set by
        # the orchestrator from the config or the local worker's announcement).
        self.data_address: str | None = None
        self.timeout = timeout
        self.chunk_bytes = chunk_bytes
        self.retries = retries
        self.retry_seconds = retry_seconds
        self.backoff = backoff
        self.metadata = tuple(metadata)
        self.bytes_sent = 0
        self.bytes_received = 0

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (0-based): doubling, capped."""
        return min(self.backoff * 2**attempt, 2.0)

    def stream_retry(self, error: WorkerError, attempt: int, started: float) -> bool:
        """Whether a failed stream read is retried: UNAVAILABLE, within the count and
        the time allowed since the first attempt (`started`, time.monotonic())."""
        again = (
            error.code == grpc.StatusCode.UNAVAILABLE
            and attempt < self.retries
            and time.monotonic() - started < self.retry_seconds
        )
        if again:
            self.log_retry(error.call, error.details, attempt)
        return again

    def log_retry(self, call: str, details: str, attempt: int) -> None:
        """Say that a call to this worker is tried again: a lost link shows in the log
        when it happens, not only when the retries run out."""
        RETRIES.add(call)
        log.warning(
            "worker %s: %s lost (UNAVAILABLE: %s); retry %d of %d in %.2fs",
            self.name,
            call,
            details,
            attempt + 1,
            self.retries,
            self.backoff_delay(attempt),
        )


class BlockingPeerStream(PeerSettings, OrderedStream):
    """receive() with the retry rules both blocking clients keep (WorkerClient's gRPC
    stream, DataClient's data port), over each one's `_read_reply`, `_resend` and
    `_reset_stream`, and its `_lost`: the WorkerError an exception of its transport
    stands for (None: not one). aio_client.AsyncPeerStream is its event-loop twin."""

    _pending: deque

    def _read_reply(self, kind: OpKind) -> Reply:  # pragma: no cover
        raise NotImplementedError

    def _lost(self, what: str, err: BaseException) -> WorkerError | None:  # pragma: no cover
        raise NotImplementedError

    def _resend(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def _reset_stream(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def receive(self) -> Reply:
        """The answer to the oldest op not yet answered."""
        if not self._pending:
            raise RuntimeError("no op awaits an answer")
        kind, _ = self._pending[0]
        what = f"Exchange {kind.value}"
        started = time.monotonic()
        for attempt in range(self.retries + 1):
            try:
                reply = self._read_reply(kind)
                self._pending.popleft()
                return reply
            except WorkerError as err:
                error = err
            except Exception as err:
                lost = self._lost(what, err)
                if lost is None:
                    raise
                error = lost
            if not self.stream_retry(error, attempt, started):
                self._reset_stream()
                raise error
            # Transient: reopen the stream and send every unanswered op again. Ops
            # carry their OpKey; the worker applies each only once.
            time.sleep(self.backoff_delay(attempt))
            self._resend()
        raise AssertionError("unreachable")


class WorkerClient(BlockingPeerStream):
    """Talks to one worker; counts the bytes it sends and receives. `settings` are
    PeerSettings' (timeout, retries, backoff, metadata, server_name...)."""

    def __init__(self, name: str, address: str, credentials=None, channel_options=(), **settings):
        super().__init__(name, address, **settings)
        self._watchdog = Watchdog()
        self.channel = create_channel(
            address, credentials, list(_KEEPALIVE) + list(channel_options)
        )
        self.stub = worker_pb2_grpc.WorkerServiceStub(self.channel)
        self._exchange = self.channel.stream_stream(
            EXCHANGE, request_serializer=FRAME_REQUEST, response_deserializer=PARSE_RESPONSE
        )
        self._requests: queue.SimpleQueue | None = None
        self._responses: Any = None  # the Exchange call's response iterator
        self._pending: deque = deque()

    # ---- unary-style calls -----------------------------------------------------

    def _call(self, what: str, fn, request, done_if_retried=()):
        """A call with a deadline; UNAVAILABLE is retried with backoff. `request` may be
        a function making a fresh request iterator per attempt. A status listed in
        `done_if_retried` on a retry means the first attempt was applied (its answer
        was lost), e.g. ALREADY_EXISTS for a load."""
        for attempt in range(self.retries + 1):
            try:
                message = request() if callable(request) else request
                return fn(message, timeout=self.timeout, metadata=self.metadata)
            except grpc.RpcError as err:
                if attempt and err.code() in done_if_retried:
                    return None
                retry = err.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.retries
                if not retry:
                    raise WorkerError(self.name, what, err.code(), err.details()) from None
                self.log_retry(what, err.details(), attempt)
            time.sleep(self.backoff_delay(attempt))
        raise AssertionError("unreachable")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the worker's channel is up, or raise naming the worker."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise WorkerError(
                self.name,
                "connect",
                grpc.StatusCode.UNAVAILABLE,
                f"no worker answered at {self.address} within {timeout:.0f}s",
            ) from None

    def status(self) -> worker_pb2.GetStatusResponse:
        """What the worker hosts and serves."""
        response = self._call("GetStatus", self.stub.GetStatus, worker_pb2.GetStatusRequest())
        self.bytes_received += response.ByteSize()
        return response

    def load_segment(
        self,
        run_id: str,
        index: int,
        layers: list,
        optimizer: dict,
        state: dict[str, torch.Tensor] | None,
        replace: bool = False,
        callers=(),
        peers=(),
    ) -> None:
        """Create a segment on the worker from its spec and state; `callers` are the
        other workers that may send the run's ops to it, `peers` (Peer messages) where
        the run's hosts listen."""
        spec = worker_pb2.SegmentSpec(
            index=index,
            layers=[layer_specs.layer_to_proto(layer) for layer in layers],
            optimizer=optim_specs.to_proto(optimizer),
        )
        messages = [
            worker_pb2.LoadSegmentRequest(
                run_id=run_id, spec=spec, replace=replace, callers=sorted(callers), peers=peers
            )
        ]
        if state:
            chunks = codec.blob_chunks(codec.encode_state(state), self.chunk_bytes)
            for i, chunk in enumerate(chunks):
                if i == 0:
                    messages[0].state.CopyFrom(chunk)
                else:
                    messages.append(worker_pb2.LoadSegmentRequest(state=chunk))
        self.bytes_sent += sum(m.ByteSize() for m in messages)
        self._call(
            f"LoadSegment({index})",
            self.stub.LoadSegment,
            lambda: iter(messages),
            done_if_retried=(grpc.StatusCode.ALREADY_EXISTS,),
        )

    def export_segment(self, run_id: str, index: int) -> dict[str, torch.Tensor]:
        """The segment's weights and optimizer state, as named tensors. Reading changes
        nothing, so a stream cut midway (UNAVAILABLE) is read again from the start."""
        request = worker_pb2.ExportSegmentRequest(run_id=run_id, index=index)

        def read(message, timeout, metadata):
            blob = codec.BlobAssembler()
            for response in self.stub.ExportSegment(message, timeout=timeout, metadata=metadata):
                self.bytes_received += response.ByteSize()
                blob.add(response.state)
            return blob.blob()

        return codec.decode_state(self._call(f"ExportSegment({index})", read, request))

    def drop_segment(self, run_id: str, index: int) -> None:
        """Forget a segment on the worker."""
        request = worker_pb2.DropSegmentRequest(run_id=run_id, index=index)
        self.bytes_sent += request.ByteSize()
        self._call(
            f"DropSegment({index})",
            self.stub.DropSegment,
            request,
            done_if_retried=(grpc.StatusCode.NOT_FOUND,),
        )

    def drive(self, request: worker_pb2.DriveRequest):
        """Have this worker (a data owner) drive batches through the chain; yields
        the batch results as they come. No answer for `timeout` seconds ends it."""
        self.bytes_sent += request.ByteSize()
        call = self.stub.Drive(request, metadata=self.metadata)
        try:
            while True:
                self._watchdog.arm(call, self.timeout)
                try:
                    response = next(call)
                except StopIteration:
                    return
                finally:
                    self._watchdog.disarm()
                self.bytes_received += response.ByteSize()
                yield from response.results
        except grpc.RpcError as err:
            raise self._error("Drive", err) from None
        finally:
            call.cancel()

    def _error(self, what: str, err: grpc.RpcError) -> WorkerError:
        if self._watchdog.fired:
            return WorkerError(
                self.name,
                what,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no answer for {self.timeout:.0f}s from {self.address}",
            )
        return WorkerError(self.name, what, err.code(), err.details())

    # ---- the Exchange stream ---------------------------------------------------

    def _ensure_stream(self) -> queue.SimpleQueue:
        """The open stream's request queue (opening the stream if need be, also when
        the worker closed it while nothing was pending: --idle-timeout-s)."""
        if self._responses is not None and not self._pending and self._responses.done():
            self._close_stream()
        if self._requests is None or self._responses is None:
            self._requests = queue.SimpleQueue()
            self._responses = self._exchange(iter(self._requests.get, None), metadata=self.metadata)
        return self._requests

    def submit(self, op: Op) -> None:
        """Send one op (forward, backward or step) on the stream; answers come in order."""
        requests = self._ensure_stream()
        messages = op_to_proto(op, self.chunk_bytes, framed=True)
        for message in messages:
            self.bytes_sent += message.ByteSize()
            requests.put(message)
        self._pending.append((op.kind, messages))

    def _read_reply(self, kind: OpKind) -> Reply:
        self._watchdog.arm(self._responses, self.timeout)
        try:
            assembler = ReplyAssembler(kind)
            while True:
                message = next(self._responses)
                self.bytes_received += message.ByteSize()
                reply = assembler.add(message)
                if reply is not None:
                    return reply
        finally:
            self._watchdog.disarm()

    def _lost(self, what: str, err: BaseException) -> WorkerError | None:
        if isinstance(err, grpc.RpcError):
            return self._error(what, err)
        if isinstance(err, StopIteration):
            return WorkerError(self.name, what, None, "stream closed")
        return None

    def _resend(self) -> None:
        pending = list(self._pending)
        self._close_stream()
        requests = self._ensure_stream()
        for _, messages in pending:
            for message in messages:
                requests.put(message)

    def _close_stream(self) -> None:
        if self._requests is not None:
            self._requests.put(None)
        if self._responses is not None:
            self._responses.cancel()
        self._requests, self._responses = None, None

    def _reset_stream(self) -> None:
        self._close_stream()
        self._pending.clear()

    def close(self) -> None:
        """End the stream and the channel."""
        self._close_stream()
        self._watchdog.close()
        self.channel.close()
