"""The data port's framing: length-prefixed frames on one TCP (or TLS) connection.

A frame is a 5-byte header, its kind and the length of its payload, then the
payload. A connection opens with one HELLO from the caller (a magic word and its
token, if any); then the caller sends MESSAGE frames, each one ExchangeRequest
exactly as on the gRPC Exchange stream, and the worker answers each with MESSAGE
frames (ExchangeResponses) or, once, an ERROR (a gRPC status code and its
details), after which it closes the connection as gRPC ends a stream. Nothing
here is unpickled: payloads are protobuf messages or UTF-8 text.
"""

from __future__ import annotations

import enum
import socket
import struct
import sys

import grpc
import numpy

HEADER = struct.Struct("!BI")
MAGIC = b"splitnn-data/1 "
MAX_HELLO_BYTES = 4096
MAX_DETAILS_BYTES = 1024
# Tensors cross the data port in chunks of up to CHUNK_BYTES (one chunk for most),
# and a frame is a chunk plus its op's header (row indices of up to --max-rows rows):
# the worker and its callers hold the same figures.
CHUNK_BYTES = 16 << 20
MAX_FRAME_BYTES = CHUNK_BYTES + (2 << 20)
LARGE_BYTES = 65536  # a payload from here up is received into a buffer kept for it
# A peer gone without a word (a pulled cable, a host powered off) is found as gRPC's
# pings find it (every 2 s, 5 s to answer): TCP keepalive probes a connection with
# nothing in flight from 2 s on, once a second, 5 times. Data left unacknowledged
# for 30 s ends it: longer than gRPC's 5 s, as a worker reads the next op only once
# it has answered the last, so a caller's queued ops may wait in a full window while
# it computes.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 2, 1, 5
UNACKNOWLEDGED_MS = 30_000

_CODES = {code.value[0]: code for code in grpc.StatusCode}


class Kind(enum.IntEnum):
    """What a frame carries."""

    HELLO = 1
    MESSAGE = 2
    ERROR = 3


class FrameError(Exception):
    """Bytes that are not a frame this side accepts (unknown kind, too long, cut short)."""


class FrameCut(FrameError):
    """The connection ended inside a frame."""


def header(kind: Kind, length: int) -> bytes:
    """The header of a frame of `length` payload bytes."""
    return HEADER.pack(kind, length)


def hello(token: str | None) -> bytes:
    """A caller's first frame, whole."""
    payload = MAGIC + (token or "").encode()
    return header(Kind.HELLO, len(payload)) + payload


def token_of(payload: bytes) -> str | None:
    """The token a HELLO payload carries (None: none); FrameError if it is no HELLO."""
    if not payload.startswith(MAGIC):
        raise FrameError("not a splitnn data-port hello")
    token = payload[len(MAGIC) :]
    try:
        return token.decode() or None
    except UnicodeDecodeError:
        raise FrameError("the hello's token is not UTF-8") from None


def error(code: grpc.StatusCode, details: str) -> bytes:
    """An ERROR frame, whole: the status code's number, then its details (cut)."""
    text = details.encode("utf-8", "replace")[:MAX_DETAILS_BYTES]
    payload = bytes([code.value[0]]) + text
    return header(Kind.ERROR, len(payload)) + payload


def error_of(payload: bytes) -> tuple[grpc.StatusCode, str]:
    """(code, details) of an ERROR payload; an unknown code reads as UNKNOWN."""
    if not payload:
        return grpc.StatusCode.UNKNOWN, "an empty error frame"
    code = _CODES.get(payload[0], grpc.StatusCode.UNKNOWN)
    return code, payload[1:].decode("utf-8", "replace")


def parse_header(raw: bytes, max_bytes: int) -> tuple[Kind, int]:
    """(kind, payload length) of a header; FrameError past `max_bytes` or an unknown kind."""
    number, length = HEADER.unpack(raw)
    try:
        kind = Kind(number)
    except ValueError:
        raise FrameError(f"unknown frame kind {number}") from None
    if length > max_bytes:
        raise FrameError(f"a frame of {length} bytes is over the limit of {max_bytes}")
    return kind, length


def tune(sock: socket.socket) -> None:
    """Set a data-port connection's TCP options: no Nagle delay, and a dead peer found
    within seconds (where the platform has the options)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
        ("TCP_USER_TIMEOUT", UNACKNOWLEDGED_MS),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class Inbox:
    """One connection's receive buffer for large payloads, filled again once nothing
    holds the last payload received into it.

    Why: a fresh 16 MiB buffer each frame faults in 4096 pages. A received tensor is
    copied out of its frame (splitnn.wire.codec), after which the buffer is free
    again; a payload still referenced anywhere (a view, a tensor built on it) keeps
    its buffer, and the next one gets a new buffer. Small payloads get a buffer of
    their own each time."""

    def __init__(self) -> None:
        self._array: numpy.ndarray | None = None

    def take(self, size: int) -> memoryview:
        """A writable buffer of `size` bytes, unzeroed when large (it is about to be
        filled from a socket, and zeroing 16 MiB costs as much as receiving it)."""
        if size < LARGE_BYTES:
            return _fresh(size)
        array = self._array
        # Three references: the attribute, `array`, and getrefcount's argument. Any
        # view or tensor still on the last payload holds one more, through its buffer.
        if array is None or array.size < size or sys.getrefcount(array) > 3:
            array = self._array = numpy.empty(size, dtype=numpy.uint8)
        return array.data.cast("B")[:size]


def _fresh(size: int) -> memoryview:
    """A buffer of its own: small ones zeroed, large ones not (as Inbox.take)."""
    if size < LARGE_BYTES:
        return memoryview(bytearray(size))
    return numpy.empty(size, dtype=numpy.uint8).data.cast("B")


def _read_exactly(sock: socket.socket, size: int, inbox: Inbox | None = None) -> memoryview | None:
    """`size` bytes from a blocking socket; None at a clean end before the first byte."""
    view, got = (inbox.take(size) if inbox is not None else _fresh(size)), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            if got == 0:
                return None
            raise FrameCut(f"the connection ended {size - got} bytes short of a frame")
        got += n
    return view


def read_frame(
    sock: socket.socket, max_bytes: int, inbox: Inbox | None = None
) -> tuple[Kind, memoryview] | None:
    """The next frame of a blocking socket (None: the peer closed between frames);
    a large payload lands in `inbox`'s buffer when given."""
    raw = _read_exactly(sock, HEADER.size)
    if raw is None:
        return None
    kind, length = parse_header(raw.tobytes(), max_bytes)
    payload = _read_exactly(sock, length, inbox) if length else memoryview(b"")
    if payload is None:
        raise FrameCut("the connection ended inside a frame")
    return kind, payload


def pieces_of(kind: Kind, pieces: list) -> list:
    """A frame's header and payload as buffers to send in turn, small ones joined."""
    length = sum(len(piece) for piece in pieces)
    if length < LARGE_BYTES:
        return [header(kind, length) + b"".join(pieces)]
    return [header(kind, length), *pieces]


def send_frame(sock: socket.socket, kind: Kind, pieces: list) -> None:
    """Send one frame on a blocking socket; its payload's pieces are not joined."""
    send_pieces(sock, pieces_of(kind, pieces))


def send_pieces(sock: socket.socket, out: list) -> None:
    """Send buffers in turn on a blocking socket, in one sendmsg where it can."""
    if len(out) == 1 or not hasattr(sock, "sendmsg") or hasattr(sock, "cipher"):
        for piece in out:  # TLS (one record stream either way), or one small piece
            sock.sendall(piece)
        return
    views = [memoryview(piece).cast("B") for piece in out]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]
