"""A peer's data port (services.data_port): AsyncDataClient for a driving worker's
event loop, DataClient for a blocking thread (a chained forward's next hop).

The same ops, answers and retry rules as the gRPC clients, over one TCP (or TLS)
connection in frames (splitnn.transport.frames) instead of a gRPC stream: with no
gRPC thread between (the event loop's own selector reads the socket), and a
tensor goes as one chunk. A connection lost, or closed by the worker while idle,
is opened again and every unanswered op sent again (ops carry their OpKey; the
worker applies each only once).
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
from collections import deque

import grpc

from splitnn.errors import WorkerError
from splitnn.transport import frames
from splitnn.transport.aio_client import AsyncPeerStream
from splitnn.transport.client import (
    FRAME_REQUEST,
    PARSE_RESPONSE,
    BlockingPeerStream,
    PeerSettings,
)
from splitnn.transport.frames import FrameCut, FrameError, Kind
from splitnn.wire.ops import Op, OpKind, Reply, ReplyAssembler, op_to_proto

_READ_LIMIT = 1 << 20  # a TLS stream reader's buffer: large reads pause it less often
# A connection (and its TLS handshake) not made within this is given up, and retried
# as a lost one is: a host that does not answer at all must not hold a retry for the
# kernel's two minutes of SYNs.
CONNECT_SECONDS = 10.0


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _op_frames(op: Op, chunk_bytes: int) -> tuple[list, int]:
    """An op's MESSAGE frames as buffers to send in turn, and its messages' bytes."""
    out, nbytes = [], 0
    for message in op_to_proto(op, chunk_bytes, framed=True):
        pieces = FRAME_REQUEST.pieces(message)
        out += frames.pieces_of(Kind.MESSAGE, pieces)
        nbytes += sum(len(piece) for piece in pieces)
    return out, nbytes


def _answer(name: str, what: str, kind: Kind, payload):
    """The ExchangeResponse a frame from the worker carries; WorkerError for an ERROR
    frame (its status) or any frame but a MESSAGE."""
    if kind is Kind.ERROR:
        raise WorkerError(name, what, *frames.error_of(bytes(payload)))
    if kind is not Kind.MESSAGE:
        raise WorkerError(name, what, grpc.StatusCode.INTERNAL, f"a {kind.name} frame")
    return PARSE_RESPONSE(payload if len(payload) >= frames.LARGE_BYTES else bytes(payload))


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
        frames.tune(sock)
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
            frames.tune(sock)
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


class _DataPortPeer(PeerSettings):
    """What both data-port clients hold beside PeerSettings: `ssl_context` for mutual
    TLS (our certificate and the CA; it checks the worker's name: `server_name`, else
    `name`) and the `token` sent in the hello. Each client keeps its unanswered ops
    in `_pending` and ends its connection in `_end_stream`."""

    _pending: deque

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
        self._why = "not connected"  # why the last connection or write failed

    def _end_stream(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def _reset_stream(self) -> None:
        self._end_stream()
        self._pending.clear()


class AsyncDataClient(_DataPortPeer, AsyncPeerStream):
    """Ops to one worker's data port at `address`; create and use it on one loop.
    `ssl_context` and `token` as _DataPortPeer's; `settings` are PeerSettings'
    (timeout, retries, backoff, ...)."""

    def __init__(self, name: str, address: str, ssl_context=None, token=None, **settings):
        super().__init__(name, address, ssl_context, token, **settings)
        self._conn: _Plain | _Tls | None = None
        self._pending: deque = deque()

    async def _connect(self) -> None:
        host, port = _host_port(self.address)
        async with asyncio.timeout(min(self.timeout, CONNECT_SECONDS)):
            if self.ssl_context is None:
                self._conn = await _Plain.open(host, port)
            else:
                name = self.server_name or self.name
                self._conn = await _Tls.open(host, port, self.ssl_context, name)
        await self._conn.send([frames.hello(self.token)])

    async def submit(self, op: Op) -> None:
        """Send one op (forward, backward or step); answers come in order."""
        frames_out, nbytes = _op_frames(op, self.chunk_bytes)
        self.bytes_sent += nbytes
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
        except OSError as err:  # reading the answer reports it (ssl.SSLError is one)
            self._why = f"{type(err).__name__}: {err}"

    def _lost(self, what: str, err: BaseException) -> WorkerError | None:
        if not isinstance(err, (OSError, asyncio.IncompleteReadError)):
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
        self.bytes_received += length
        return _answer(self.name, what, frame_kind, payload)

    def _end_stream(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    async def close(self) -> None:
        """End the connection."""
        conn = self._conn
        self._reset_stream()
        if conn is not None:
            try:
                await conn.wait_closed()
            except OSError:
                pass


class DataClient(_DataPortPeer, BlockingPeerStream):
    """Ops to one worker's data port from a blocking thread: a host passing a chained
    forward on (services.chain_forward) calls the next host so, from its handler
    thread. The same frames, answers and retry rules as AsyncDataClient; a read
    waits at most `timeout` for the worker's next bytes."""

    def __init__(self, name: str, address: str, ssl_context=None, token=None, **settings):
        super().__init__(name, address, ssl_context, token, **settings)
        self._sock: socket.socket | None = None
        self._inbox = frames.Inbox()
        self._pending: deque = deque()

    def _connect(self) -> socket.socket:
        connect_s = min(self.timeout, CONNECT_SECONDS)
        sock = socket.create_connection(_host_port(self.address), timeout=connect_s)
        try:
            frames.tune(sock)
            if self.ssl_context is not None:
                name = self.server_name or self.name
                sock = self.ssl_context.wrap_socket(sock, server_hostname=name)
            sock.settimeout(self.timeout)  # each read waits this long for the worker
            sock.sendall(frames.hello(self.token))
        except BaseException:
            sock.close()
            raise
        return sock

    def submit(self, op: Op) -> None:
        """Send one op (forward, backward or step); answers come in order."""
        out, nbytes = _op_frames(op, self.chunk_bytes)
        self.bytes_sent += nbytes
        if not self._pending and self._sock is not None and _closed_by_worker(self._sock):
            self._end_stream()  # the worker closed it while idle
        self._pending.append((op.kind, out))
        self._write(out)

    def _write(self, out: list) -> None:
        try:
            if self._sock is None:
                self._sock = self._connect()
            frames.send_pieces(self._sock, out)
        except OSError as err:  # reading the answer reports it (ssl.SSLError is one)
            self._why = f"{type(err).__name__}: {err}"
            self._end_stream()

    def _lost(self, what: str, err: BaseException) -> WorkerError | None:
        if isinstance(err, TimeoutError):
            why = f"no answer for {self.timeout:.0f}s from {self.address}"
            return WorkerError(self.name, what, grpc.StatusCode.DEADLINE_EXCEEDED, why)
        if isinstance(err, (OSError, FrameCut)):
            why = f"data port {self.address}: {type(err).__name__}: {err}"
            return WorkerError(self.name, what, grpc.StatusCode.UNAVAILABLE, why)
        return None

    def _resend(self) -> None:
        self._end_stream()
        for _, out in list(self._pending):
            self._write(out)

    def _read_reply(self, kind: OpKind) -> Reply:
        what = f"Exchange {kind.value}"
        if self._sock is None:
            why = f"cannot reach the data port at {self.address}: {self._why}"
            raise WorkerError(self.name, what, grpc.StatusCode.UNAVAILABLE, why)
        assembler = ReplyAssembler(kind)
        while (reply := assembler.add(self._next_message(self._sock, what))) is None:
            pass
        return reply

    def _next_message(self, sock: socket.socket, what: str):
        try:
            frame = frames.read_frame(sock, frames.MAX_FRAME_BYTES, self._inbox)
        except FrameCut:  # the connection's end: _lost's to say
            raise
        except FrameError as err:
            raise WorkerError(self.name, what, grpc.StatusCode.INTERNAL, str(err)) from None
        if frame is None:
            raise FrameCut("the worker closed the connection")
        self.bytes_received += len(frame[1])
        return _answer(self.name, what, *frame)

    def _end_stream(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None

    def close(self) -> None:
        """End the connection."""
        self._reset_stream()


def _closed_by_worker(sock: socket.socket) -> bool:
    """Whether an idle connection has ended (the worker closes silent ones): readable
    with nothing owed to us. A TLS record that is no data (a session ticket) is read
    and kept open."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    if not readable:
        return False
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        if isinstance(sock, ssl.SSLSocket):
            sock.recv(1)  # no peeking through TLS
        else:
            sock.recv(1, socket.MSG_PEEK)
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    except OSError:
        return True
    finally:
        sock.settimeout(timeout)
    return True  # the end (b"") or bytes no op asked for: either way, start again
