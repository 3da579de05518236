"""A bare gRPC stream that echoes bytes: the ceiling of anything that travels over
gRPC Python, for bench.dataplane to set the Exchange beside.

    python -m bench.grpc_echo [--listen 127.0.0.1:0]   # prints the port it took

The server and channel have the workers' own options (splitnn.transport.channels),
and messages go through identity serializers: no protobuf, no splitnn, one sync
stream fed from a queue, as WorkerClient's is.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import queue
import sys

import grpc

from splitnn.transport.channels import create_channel, create_server

METHOD = "/bench.Echo/Echo"


def _same(data: bytes) -> bytes:
    return data


def _echo(requests, context):
    """Each payload comes as a count (8 bytes), then that many messages; all of them go
    back once the last is in, as a worker answers a tensor only once it is whole."""
    for head in requests:
        count = int.from_bytes(head, "little")
        pieces = list(itertools.islice(requests, count))
        if len(pieces) < count:
            return  # the caller went away mid-payload
        yield from pieces


def serve(listen: str) -> None:
    """Serve the echo on `listen` until killed, after printing the port."""
    server, port = create_server(listen, max_workers=4)
    handler = grpc.stream_stream_rpc_method_handler(_echo, _same, _same)
    service, method = METHOD.strip("/").split("/")
    generic = grpc.method_handlers_generic_handler(service, {method: handler})
    server.add_generic_rpc_handlers([generic])
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


@contextlib.contextmanager
def echo_stream(address: str, chunk_bytes: int = 1 << 20):
    """An open echo stream to `address`; yields `send(payload)`, which sends the payload
    in messages of `chunk_bytes` (as the Exchange chunks tensors) after their count,
    and returns how many bytes came back."""
    channel = create_channel(address)
    outgoing: queue.Queue = queue.Queue()

    def requests():
        while (item := outgoing.get()) is not None:
            yield item

    replies = channel.stream_stream(METHOD, request_serializer=_same, response_deserializer=_same)(
        requests()
    )

    def send(payload: bytes) -> int:
        pieces = [payload[i : i + chunk_bytes] for i in range(0, len(payload), chunk_bytes)]
        outgoing.put(len(pieces).to_bytes(8, "little"))
        for piece in pieces:
            outgoing.put(piece)
        return sum(len(next(replies)) for _ in pieces)

    try:
        yield send
    finally:
        outgoing.put(None)
        replies.cancel()
        channel.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.grpc_echo", description=__doc__)
    p.add_argument("--listen", default="127.0.0.1:0")
    serve(p.parse_args(argv).listen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
