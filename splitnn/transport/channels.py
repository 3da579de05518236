"""One place that builds gRPC servers and channels, with message size limits set."""

from __future__ import annotations

from concurrent import futures

import grpc

from splitnn.model.threads import adopt_torch_threads

# Tensors are chunked at 1 MiB; a message is a chunk plus a small header.
MAX_MESSAGE_BYTES = 16 << 20

_OPTIONS = [
    ("grpc.http2.lookahead_bytes", 8 << 20),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


# Clients ping every 10 s to notice a dead link; the server must accept that.
_SERVER_OPTIONS = [
    # Ping clients too: a client behind a link that died without a reset would
    # otherwise hold a handler thread (waiting for its next request) for hours.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
]


def create_server(address: str, max_workers: int = 16, interceptors=(), credentials=None):
    """A server bound to `address` (port 0 picks a free one); returns (server, port).
    Its handler threads use the process's torch thread count (see torch_threads)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, initializer=adopt_torch_threads),
        options=_OPTIONS + _SERVER_OPTIONS,
        interceptors=list(interceptors),
    )
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return server, port


def channel_options(options=()) -> list:
    """Options of a channel to a worker: the same size limits as its server, then ours."""
    return _OPTIONS + list(options)


def create_channel(address: str, credentials=None, options=()) -> grpc.Channel:
    """A channel to a worker with the same size limits as its server."""
    opts = channel_options(options)
    if credentials is None:
        return grpc.insecure_channel(address, options=opts)
    return grpc.secure_channel(address, credentials, options=opts)
