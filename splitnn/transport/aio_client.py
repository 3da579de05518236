"""The Exchange stream of a worker, for code running on an asyncio event loop.

A data owner's worker drives the chain from one event loop (services.driver):
with grpc.aio, writing an op and reading its answer happen on that loop's
thread, with no hand-over to gRPC's helper threads as in the blocking API.
That is worth a tenth of a step on the MLP benchmark. Same ops, same answers
and same retry rules as splitnn.transport.client.WorkerClient's stream.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import grpc
from grpc import aio

from splitnn.errors import WorkerError
from splitnn.transport import channels
from splitnn.transport.client import (
    _KEEPALIVE,
    EXCHANGE,
    FRAME_REQUEST,
    PARSE_RESPONSE,
    PeerSettings,
)
from splitnn.transport.stream import AsyncOrderedStream
from splitnn.wire.ops import Op, OpKind, Reply, ReplyAssembler, op_to_proto

# Pings every 2 s instead of 10: a link to a peer that dies without a reset is found
# by pings alone, and the whole chain waits on it.
_PEER_KEEPALIVE = [("grpc.keepalive_time_ms", 2_000)] + [
    option for option in _KEEPALIVE if option[0] != "grpc.keepalive_time_ms"
]


class AsyncPeerStream(PeerSettings, AsyncOrderedStream):
    """receive() with the retry rules both event-loop clients keep, over each one's
    `_read_reply`, `_write`, `_end_stream` and `_reset_stream`, and its `_lost`:
    the WorkerError an exception of its transport stands for (None: not one)."""

    _pending: deque

    async def _read_reply(self, kind: OpKind) -> Reply:  # pragma: no cover
        raise NotImplementedError

    async def _write(self, messages) -> None:  # pragma: no cover
        raise NotImplementedError

    def _end_stream(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def _reset_stream(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def _lost(self, what: str, err: BaseException) -> WorkerError | None:  # pragma: no cover
        raise NotImplementedError

    async def receive(self) -> Reply:
        """The answer to the oldest op not yet answered."""
        if not self._pending:
            raise RuntimeError("no op awaits an answer")
        kind, _ = self._pending[0]
        what = f"Exchange {kind.value}"
        started = time.monotonic()
        for attempt in range(self.retries + 1):
            try:
                async with asyncio.timeout(self.timeout):  # no task per read, as wait_for
                    reply = await self._read_reply(kind)
                self._pending.popleft()
                return reply
            except TimeoutError:
                error = WorkerError(
                    self.name,
                    what,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no answer for {self.timeout:.0f}s from {self.address}",
                )
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
            await asyncio.sleep(self.backoff_delay(attempt))
            self._end_stream()
            for _, messages in list(self._pending):
                await self._write(messages)
        raise AssertionError("unreachable")


class AsyncExchangeClient(AsyncPeerStream):
    """Ops to one worker on a long-lived Exchange stream; create and use it on one loop.
    `settings` are PeerSettings' (timeout, retries, backoff, metadata, server_name...)."""

    def __init__(self, name: str, address: str, credentials=None, channel_options=(), **settings):
        super().__init__(name, address, **settings)
        options = channels.channel_options(_PEER_KEEPALIVE + list(channel_options))
        if credentials is None:
            self.channel = aio.insecure_channel(address, options=options)
        else:
            self.channel = aio.secure_channel(address, credentials, options=options)
        # Bytes are counted as they are (de)serialized: exact, and no second encoding.
        self._exchange = self.channel.stream_stream(
            EXCHANGE, request_serializer=self._serialize, response_deserializer=self._parse
        )
        self._call: aio.StreamStreamCall | None = None
        self._write_failed = False
        self._pending: deque = deque()

    def _serialize(self, message) -> bytes:
        data = FRAME_REQUEST(message)
        self.bytes_sent += len(data)
        return data

    def _parse(self, data: bytes):
        self.bytes_received += len(data)
        return PARSE_RESPONSE(data)

    async def submit(self, op: Op) -> None:
        """Send one op (forward, backward or step); answers come in order."""
        messages = op_to_proto(op, self.chunk_bytes, framed=True)
        if not self._pending and self._call is not None and self._call.done():
            self._end_stream()  # the worker closed it while idle (--idle-timeout-s)
        self._pending.append((op.kind, messages))
        await self._write(messages)

    async def _write(self, messages) -> None:
        if self._call is None:
            self._call = self._exchange(metadata=self.metadata)
        call = self._call
        try:
            for message in messages:
                await call.write(message)
        except grpc.RpcError:
            # The link dropped mid-write: grpc.aio then ends the call with a local
            # INTERNAL ("Internal error from Core") instead of UNAVAILABLE.
            self._write_failed = True
        except asyncio.InvalidStateError:
            pass  # the stream has ended: reading the answer reports why

    def _lost(self, what: str, err: BaseException) -> WorkerError | None:
        if not isinstance(err, grpc.RpcError):
            return None
        code = err.code()
        if code == grpc.StatusCode.INTERNAL and self._write_failed:
            code = grpc.StatusCode.UNAVAILABLE  # our write failed: a lost link
        return WorkerError(self.name, what, code, err.details())

    async def _read_reply(self, kind: OpKind) -> Reply:
        if self._call is None:
            raise WorkerError(self.name, f"Exchange {kind.value}", None, "stream closed")
        assembler = ReplyAssembler(kind)
        while True:
            message = await self._call.read()
            if message is aio.EOF:
                raise WorkerError(self.name, f"Exchange {kind.value}", None, "stream closed")
            reply = assembler.add(message)
            if reply is not None:
                return reply

    def _end_stream(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self._call, self._write_failed = None, False

    def _reset_stream(self) -> None:
        self._end_stream()
        self._pending.clear()

    async def close(self) -> None:
        """End the stream and the channel."""
        self._reset_stream()
        await self.channel.close()
