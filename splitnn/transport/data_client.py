"""A peer's data port, for a driving worker's event loop (services.data_port).

The same ops, answers and retry rules as AsyncExchangeClient, over one TCP (or
TLS) connection in frames (splitnn.transport.frames) instead of a gRPC stream:
the loop's own selector reads the socket, with no gRPC thread between, and a
tensor goes as one chunk. A connection lost, or closed by the worker while idle,
is opened again and every unanswered op sent again (ops carry their OpKey; the
worker applies each only once).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque

import grpc

from splitnn.errors import WorkerError
from splitnn.transport import frames
from splitnn.transport.aio_client import AsyncPeerStream
from splitnn.transport.client import FRAME_REQUEST, PARSE_RESPONSE
from splitnn.transport.frames import FrameError, Kind
from splitnn.wire.ops import Op, OpKind, Reply, ReplyAssembler, op_to_proto

_READ_LIMIT = 1 << 20  # a TLS stream reader's buffer: large reads pause it less often


class _Plain:
    """A plaintext connection read and written by the loop's socket calls: a tensor
    goes from its own memory and arrives in a buffer of its own, with no copy between."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.inbox = frames.Inbox()

    @classmethod
    async def open(cls, host: str, port: int) -> _Plain:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, where = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, where)
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock)

    async def send(self, pieces: list) -> None:
        for piece in pieces:
            await self.loop.sock_sendall(self.sock, piece)

    async def read(self, size: int) -> memoryview:
        view, got = self.inbox.take(size), 0
        while got < size:
            n = await self.loop.sock_recv_into(self.sock, view[got:])
            if n == 0:
                raise asyncio.IncompleteReadError(bytes(view[:got]), size)
            got += n
        return view

    def at_eof(self) -> bool:
        try:  # readable with nothing to read: the worker closed it (idle)
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()

    async def wait_closed(self) -> None:
        return None


class _Tls:
    """A TLS connection through asyncio's streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int, context: ssl.SSLContext, name: str) -> _Tls:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=name, limit=_READ_LIMIT
        )
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def send(self, pieces: list) -> None:
        self.writer.writelines(pieces)
        await self.writer.drain()

    async def read(self, size: int) -> bytes:
        return await self.reader.readexactly(size)

    def at_eof(self) -> bool:
        return self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()

    async def wait_closed(self) -> None:
        await self.writer.wait_closed()


class AsyncDataClient(AsyncPeerStream):
    """Ops to one worker's data port at `address`; create and use it on one loop.
    `ssl_context`: mutual TLS (it must hold our certificate and the CA, and check
    the worker's name: `server_name`, else `name`); `token`: sent in the hello.
    `settings` are PeerSettings' (timeout, retries, backoff, ...)."""

    def __init__(
        self,
        name: str,
        address: str,
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
        **settings,
    ):
        settings.setdefault("chunk_bytes", frames.CHUNK_BYTES)
        super().__init__(name, address, **settings)
        self.ssl_context = ssl_context
        self.token = token
        self._conn: _Plain | _Tls | None = None
        self._why = "not connected"  # why the last connection or write failed
        self._pending: deque = deque()

    async def _connect(self) -> None:
        host, _, port = self.address.rpartition(":")
        host = host.strip("[]")
        if self.ssl_context is None:
            self._conn = await _Plain.open(host, int(port))
        else:
            name = self.server_name or self.name
            self._conn = await _Tls.open(host, int(port), self.ssl_context, name)
        await self._conn.send([frames.hello(self.token)])

    async def submit(self, op: Op) -> None:
        """Send one op (forward, backward or step); answers come in order."""
        frames_out = []
        for message in op_to_proto(op, self.chunk_bytes, framed=True):
            pieces = FRAME_REQUEST.pieces(message)
            frames_out += frames.pieces_of(Kind.MESSAGE, pieces)
            self.bytes_sent += sum(len(piece) for piece in pieces)
        if not self._pending and self._conn is not None and self._conn.at_eof():
            self._end_stream()  # the worker closed it while idle
        self._pending.append((op.kind, frames_out))
        await self._write(frames_out)

    async def _write(self, pieces: list) -> None:
        try:
            if self._conn is None:
                await self._connect()
            assert self._conn is not None
            await self._conn.send(pieces)
        except (OSError, ssl.SSLError, ConnectionError) as err:
            self._why = f"{type(err).__name__}: {err}"  # reading the answer reports it

    def _lost(self, what: str, err: BaseException) -> WorkerError | None:
        if not isinstance(err, (OSError, ssl.SSLError, asyncio.IncompleteReadError)):
            return None
        why = f"data port {self.address}: {type(err).__name__}: {err}"
        return WorkerError(self.name, what, grpc.StatusCode.UNAVAILABLE, why)

    async def _read_reply(self, kind: OpKind) -> Reply:
        what = f"Exchange {kind.value}"
        if self._conn is None:
            why = f"cannot reach the data port at {self.address}: {self._why}"
            raise WorkerError(self.name, what, grpc.StatusCode.UNAVAILABLE, why)
        assembler = ReplyAssembler(kind)
        while (reply := assembler.add(await self._next_message(what))) is None:
            pass
        return reply

    async def _next_message(self, what: str):
        """The next answer's message; a large one's bytes in the connection's inbox."""
        assert self._conn is not None
        head = await self._conn.read(frames.HEADER.size)
        try:
            frame_kind, length = frames.parse_header(bytes(head), frames.MAX_FRAME_BYTES)
        except FrameError as err:
            raise WorkerError(self.name, what, grpc.StatusCode.INTERNAL, str(err)) from None
        payload = await self._conn.read(length) if length else b""
        if frame_kind is Kind.ERROR:
            raise WorkerError(self.name, what, *frames.error_of(bytes(payload)))
        if frame_kind is not Kind.MESSAGE:
            raise WorkerError(
                self.name, what, grpc.StatusCode.INTERNAL, f"a {frame_kind.name} frame"
            )
        self.bytes_received += length
        return PARSE_RESPONSE(payload if length >= frames.LARGE_BYTES else bytes(payload))

    def _end_stream(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def _reset_stream(self) -> None:
        self._end_stream()
        self._pending.clear()

    async def close(self) -> None:
        """End the connection."""
        conn = self._conn
        self._reset_stream()
        if conn is not None:
            try:
                await conn.wait_closed()
            except (OSError, ssl.SSLError, ConnectionError):
                pass
