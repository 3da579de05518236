"""Serve WorkerService so that a request which is not a valid message gets INVALID_ARGUMENT.

gRPC's generated registration (worker_pb2_grpc.add_WorkerServiceServicer_to_server)
answers bytes that do not parse with INTERNAL ("Exception deserializing request!"),
which reads as a fault of the worker rather than of the caller. Here every request
is parsed by a function that never raises: what does not parse reaches the method
as a Malformed marker, which the method turns into INVALID_ARGUMENT before it
touches any state, and the worker keeps serving.
"""

from __future__ import annotations

import grpc
from google.protobuf import message_factory

from splitnn.errors import InvalidArgument
from splitnn.v1 import worker_pb2
from splitnn.wire import lift

SERVICE = worker_pb2.DESCRIPTOR.services_by_name["WorkerService"]

_HANDLER_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


class Malformed:
    """A request whose bytes are not a valid message of the method's request type."""

    def __init__(self, type_name: str, error: Exception):
        self.reason = f"the request is not a valid {type_name} message: {error}"


# Methods whose messages carry tensors: their chunks' bytes are lifted out of
# requests and framed into answers (splitnn.wire.lift).
TENSOR_METHODS = {"Exchange", "Forward", "Backward"}


def parser(message_class, lifting: bool = False):
    read = lift.Parser(message_class) if lifting else message_class.FromString

    def parse(data: bytes):
        try:
            return read(data)
        except Exception as err:  # DecodeError, or anything else bytes from afar provoke
            return Malformed(message_class.DESCRIPTOR.full_name, err)

    return parse


def checked(messages):
    for message in messages:
        if isinstance(message, Malformed):
            raise InvalidArgument(message.reason)
        yield message


# The Exchange as the data port carries it (services.data_port): parsed and framed
# as on the gRPC stream.
PARSE_EXCHANGE = parser(worker_pb2.ExchangeRequest, lifting=True)
FRAME_EXCHANGE = lift.Framer(worker_pb2.ExchangeResponse)


def _stream_request(behavior):
    # The servicer reads the stream inside its error mapping: InvalidArgument there
    # becomes the INVALID_ARGUMENT status.
    def handle(request_iterator, context):
        return behavior(checked(request_iterator), context)

    return handle


def _single_request(behavior):
    def handle(request, context):
        if isinstance(request, Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"InvalidArgument: {request.reason}")
        return behavior(request, context)

    return handle


def add_worker_service(servicer, server) -> None:
    """Register `servicer`'s WorkerService methods on `server` (in place of the
    generated add_WorkerServiceServicer_to_server)."""
    handlers = {}
    for method in SERVICE.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        behavior = getattr(servicer, method.name)
        wrap = _stream_request if method.client_streaming else _single_request
        make_handler = _HANDLER_KINDS[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make_handler(
            wrap(behavior),
            request_deserializer=parser(request_class, method.name in TENSOR_METHODS),
            response_serializer=(
                lift.Framer(response_class)
                if method.name in TENSOR_METHODS
                else response_class.SerializeToString
            ),
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
