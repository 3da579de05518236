"""The data port (services.data_port, splitnn.transport.frames / data_client): the
same ops and answers as the gRPC Exchange, the same identities and policy, and bad
input refused with its status code while the worker keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import socket
import struct
import time

import grpc
import numpy
import pytest
import torch

from splitnn.errors import WorkerError
from splitnn.security.access import AccessPolicy
from splitnn.security.identity import parse_tokens
from splitnn.services.chain_forward import PeerPool
from splitnn.services.data_port import DataPortServer
from splitnn.services.guard import CallSlots
from splitnn.services.runs import PeerAddress
from splitnn.transport import frames
from splitnn.transport.client import FRAME_REQUEST, RETRIES
from splitnn.transport.data_client import AsyncDataClient, DataClient
from splitnn.v1 import worker_pb2
from splitnn.wire.ops import Op, OpKind, op_to_proto
from tests.conftest import start_worker

TOKENS = {name: secrets.token_hex(16) for name in ("orchestrator", "bob", "mallory")}


@contextlib.contextmanager
def _served(access: AccessPolicy, ssl_context=None, callers=(), idle_seconds=None, **options):
    """An in-process worker (alice) with a Linear segment of run "r" owned by the
    orchestrator, and its data port; yields (worker, port)."""
    running, stop = start_worker(access=access, **options)
    torch.manual_seed(0)
    running.host.load_segment(
        "r",
        0,
        [{"type": "Linear", "in_features": 3, "out_features": 2}],
        {"name": "sgd", "lr": 0.1},
        None,
        owner="orchestrator",
        callers=list(callers),
    )
    server = DataPortServer(
        running.servicer, "127.0.0.1", 0, ssl_context, idle_seconds=idle_seconds
    )
    server.start()
    try:
        yield running, server.port
    finally:
        server.close()
        stop()


@pytest.fixture
def port():
    """Per-identity tokens, bob named among the run's callers, 2 call slots each."""
    table = parse_tokens("".join(f"{n} {t}\n" for n, t in TOKENS.items()))
    with _served(AccessPolicy(tokens=table), callers=["bob"], slots=CallSlots(2)) as served:
        yield served


def _forward(batch_id: int = 1, rows: int = 4) -> Op:
    head = worker_pb2.ForwardRequest(
        run_id="r", segments=[0], batch_id=batch_id, mode=worker_pb2.FORWARD_MODE_EVAL
    )
    head.want_output = True
    return Op(OpKind.FORWARD, head, torch.ones(rows, 3))


@pytest.fixture(params=["event loop", "blocking"])
def blocking(request) -> bool:
    """Both clients: AsyncDataClient (a driver's) and DataClient (a chain hop's)."""
    return request.param == "blocking"


def _call(port: int, op: Op, token: str | None, blocking: bool = False, **settings):
    address = f"127.0.0.1:{port}"
    if blocking:
        client = DataClient("alice", address, token=token, **settings)
        try:
            return client.call(op)
        finally:
            client.close()

    async def run():
        client = AsyncDataClient("alice", address, token=token, **settings)
        try:
            return await client.call(op)
        finally:
            await client.close()

    return asyncio.run(run())


def _expected(running, rows: int = 4) -> torch.Tensor:
    segment = running.host.segments()[0]
    with torch.no_grad():
        return segment.module(torch.ones(rows, 3))


def test_forward_over_the_data_port_answers_as_the_segment(port, blocking):
    running, number = port
    reply = _call(number, _forward(), TOKENS["orchestrator"], blocking)
    assert torch.equal(reply.tensor, _expected(running))


def test_the_worker_counts_the_bytes_of_a_data_port_op_once(port):
    running, number = port
    received, sent = running.servicer.bytes_received, running.servicer.bytes_sent

    async def run():
        client = AsyncDataClient("alice", f"127.0.0.1:{number}", token=TOKENS["orchestrator"])
        try:
            await client.call(_forward())
            return client.bytes_sent, client.bytes_received
        finally:
            await client.close()

    client_sent, client_received = asyncio.run(run())
    assert running.servicer.bytes_received - received == client_sent
    assert running.servicer.bytes_sent - sent == client_received


def test_a_large_tensor_crosses_in_frames_of_its_own(port, blocking):
    running, number = port
    rows = (20 << 20) // 12  # 20 MiB of input: two frames of 16 MiB chunks and more
    op = _forward(rows=rows)
    reply = _call(number, op, TOKENS["orchestrator"], blocking, chunk_bytes=8 << 20)
    assert torch.equal(reply.tensor, _expected(running, rows))


def test_a_connection_the_worker_closed_while_idle_is_opened_again_unnoticed():
    table = parse_tokens(f"orchestrator {TOKENS['orchestrator']}\n")
    with _served(AccessPolicy(tokens=table), idle_seconds=0.2) as (running, number):
        client = DataClient("alice", f"127.0.0.1:{number}", token=TOKENS["orchestrator"])
        try:
            retried = RETRIES.counts()
            client.call(_forward(batch_id=9))
            assert client._sock is not None  # a dead peer is found by TCP's own probes
            assert client._sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            if hasattr(socket, "TCP_USER_TIMEOUT"):
                timeout_ms = client._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
                assert timeout_ms == frames.UNACKNOWLEDGED_MS
            time.sleep(0.5)
            for batch_id in (1, 2):
                reply = client.call(_forward(batch_id=batch_id))
                assert torch.equal(reply.tensor, _expected(running))
                time.sleep(0.5)  # the worker ends the silent connection
            assert RETRIES.counts() == retried  # found closed before sending: no retry
        finally:
            client.close()


def test_a_chain_hop_goes_to_the_peers_data_port_when_it_has_one(port):
    running, number = port
    pool = PeerPool(data_factory=functools.partial(DataClient, token=TOKENS["bob"]))
    with socket.socket() as closed:  # a gRPC address where nothing listens
        closed.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{closed.getsockname()[1]}"
    where = PeerAddress(nowhere, "", f"127.0.0.1:{number}")
    try:
        reply = pool.call("alice", where, _forward())
    finally:
        pool.close()
    assert torch.equal(reply.tensor, _expected(running))


def test_a_wrong_token_is_unauthenticated_and_the_worker_keeps_serving(port, blocking):
    running, number = port
    with pytest.raises(WorkerError) as refused:
        _call(number, _forward(), "not-a-token-of-anyone", blocking, retries=0)
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(WorkerError) as none:
        _call(number, _forward(), None, blocking, retries=0)
    assert none.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert torch.equal(_call(number, _forward(), TOKENS["orchestrator"]).tensor, _expected(running))


def test_a_peer_outside_the_run_is_denied_and_a_named_one_is_not(port):
    running, number = port
    with pytest.raises(WorkerError) as denied:
        _call(number, _forward(), TOKENS["mallory"], retries=0)
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert torch.equal(_call(number, _forward(2), TOKENS["bob"]).tensor, _expected(running))


def test_a_peer_may_not_read_the_workers_own_rows(port):
    _, number = port
    head = worker_pb2.ForwardRequest(
        run_id="r", segments=[0], batch_id=3, mode=worker_pb2.FORWARD_MODE_EVAL
    )
    head.data.dataset = "toy"
    head.data.indices.extend(range(4))
    with pytest.raises(WorkerError) as denied:
        _call(number, Op(OpKind.FORWARD, head, None), TOKENS["bob"], retries=0)
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED


def _raw(number: int, *chunks: bytes) -> tuple[frames.Kind, bytes] | None:
    """Send raw bytes to the data port; the first frame it answers (None: it closed)."""
    with socket.create_connection(("127.0.0.1", number), timeout=10) as sock:
        for chunk in chunks:
            sock.sendall(chunk)
        frame = frames.read_frame(sock, 1 << 20)
    return None if frame is None else (frame[0], frame[1].tobytes())


def _message(op: Op) -> bytes:
    (message,) = op_to_proto(op, 1 << 20, framed=True)
    data = FRAME_REQUEST(message)
    return frames.header(frames.Kind.MESSAGE, len(data)) + data


@pytest.mark.parametrize(
    "what",
    ["no hello", "unknown kind", "too long", "garbage message", "hello twice", "not protobuf"],
)
def test_malformed_frames_get_invalid_argument_and_change_nothing(port, what):
    running, number = port
    hello = frames.hello(TOKENS["orchestrator"])
    before = {k: v.clone() for k, v in running.host.segments()[0].module.state_dict().items()}
    sent = {
        "no hello": [_message(_forward())],
        "unknown kind": [hello, struct.pack("!BI", 9, 0)],
        "too long": [hello, frames.header(frames.Kind.MESSAGE, 1 << 30)],
        "garbage message": [hello, frames.header(frames.Kind.MESSAGE, 4) + b"\xff\xff\xff\xff"],
        "hello twice": [hello, hello],
        "not protobuf": [b"GET / HTTP/1.1\r\n\r\n"],
    }[what]
    answer = _raw(number, *sent)
    assert answer is not None and answer[0] is frames.Kind.ERROR
    code, details = frames.error_of(answer[1])
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    after = running.host.segments()[0].module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(_call(number, _forward(), TOKENS["orchestrator"]).tensor, _expected(running))


def test_call_slots_hold_for_data_port_connections(port):
    """An identity's connections take its call slots (2 here) like its gRPC streams."""
    running, number = port
    hello = frames.hello(TOKENS["bob"])
    held = [socket.create_connection(("127.0.0.1", number), timeout=10) for _ in range(2)]
    try:
        for sock in held:
            sock.sendall(hello)
        servicer = running.servicer
        for _ in range(200):
            if servicer.slots.held("bob") == 2:
                break
            asyncio.run(asyncio.sleep(0.01))
        with pytest.raises(WorkerError) as full:
            _call(number, _forward(), TOKENS["bob"], retries=0)
        assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for sock in held:
            sock.close()


def test_replies_kept_by_the_caller_are_not_overwritten_by_later_ones(port):
    """The client's inbox fills one buffer again only once nothing holds it."""
    running, number = port
    rows = 12000  # 96 KB of answer per op: past frames.LARGE_BYTES, into the inbox
    inputs = [torch.full((rows, 3), float(k)) for k in range(3)]

    async def run():
        client = AsyncDataClient("alice", f"127.0.0.1:{number}", token=TOKENS["orchestrator"])
        try:
            replies = []
            for k, tensor in enumerate(inputs):
                op = _forward(batch_id=k + 1, rows=rows)
                replies.append(await client.call(Op(op.kind, op.head, tensor)))
            return [reply.tensor for reply in replies]
        finally:
            await client.close()

    segment = running.host.segments()[0]
    with torch.no_grad():
        expected = [segment.module(tensor) for tensor in inputs]
    for got, want in zip(asyncio.run(run()), expected, strict=True):
        assert torch.equal(got, want)


def _address(view: memoryview) -> int:
    return numpy.frombuffer(view, dtype=numpy.uint8).ctypes.data


def test_an_inbox_reuses_its_buffer_only_when_nothing_holds_it():
    inbox = frames.Inbox()
    first = inbox.take(frames.LARGE_BYTES + 10)
    first[:3] = b"abc"
    where = _address(first)
    held = first[:3]
    second = inbox.take(frames.LARGE_BYTES)  # `held` still holds the first buffer
    second[:3] = b"xyz"
    assert bytes(held) == b"abc" and _address(second) != where
    where = _address(second)
    del first, held, second
    again = inbox.take(frames.LARGE_BYTES)  # free again, and large enough: the same
    assert _address(again) == where
    del again
    assert _address(inbox.take(2 * frames.LARGE_BYTES)) != where  # too small: a new one
    assert len(inbox.take(100)) == 100  # small payloads: a buffer of their own


def test_frame_helpers_round_trip():
    assert frames.error_of(frames.error(grpc.StatusCode.NOT_FOUND, "x" * 5000)[5:]) == (
        grpc.StatusCode.NOT_FOUND,
        "x" * frames.MAX_DETAILS_BYTES,
    )
    assert frames.token_of(frames.hello("abc")[5:]) == "abc"
    assert frames.token_of(frames.hello(None)[5:]) is None
    with pytest.raises(frames.FrameError):
        frames.parse_header(frames.header(frames.Kind.MESSAGE, 11), 10)
    big = [b"a" * 70000, memoryview(b"b" * 5)]
    out = frames.pieces_of(frames.Kind.MESSAGE, big)
    assert frames.parse_header(out[0], 1 << 20) == (frames.Kind.MESSAGE, 70005)


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory):
    from splitnn.orchestrator.cli import main as splitnn_main

    directory = tmp_path_factory.mktemp("certs")
    assert splitnn_main(["certs", "init", "--dir", str(directory)]) == 0
    for name in ("alice", "orchestrator", "mallory"):
        assert splitnn_main(["certs", "issue", name, "--dir", str(directory)]) == 0
    return directory


@pytest.fixture
def tls_port(tls_dir):
    """alice's worker under mutual TLS with its data port; yields (worker, port)."""
    from splitnn.security.policy import Security

    security = Security.from_options(tls_dir=tls_dir, identity="alice")
    with _served(AccessPolicy(tls=True), security.ssl_server_context()) as served:
        yield served


def _tls(tls_dir, identity: str):
    from splitnn.security.policy import Security

    return Security.from_options(tls_dir=tls_dir, identity=identity).ssl_client_context()


def test_mutual_tls_names_the_caller_by_its_certificate(tls_port, tls_dir, blocking):
    running, number = tls_port
    mine = _call(number, _forward(), None, blocking, ssl_context=_tls(tls_dir, "orchestrator"))
    assert torch.equal(mine.tensor, _expected(running))
    with pytest.raises(WorkerError) as denied:
        _call(number, _forward(), None, blocking, ssl_context=_tls(tls_dir, "mallory"), retries=0)
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_tls_refuses_plaintext_and_a_worker_of_another_name(tls_port, tls_dir, blocking):
    running, number = tls_port
    with pytest.raises(WorkerError) as plain:
        _call(number, _forward(), None, blocking, retries=0)
    assert plain.value.code == grpc.StatusCode.UNAVAILABLE
    context = _tls(tls_dir, "orchestrator")
    with pytest.raises(WorkerError) as misnamed:  # we expect bob; alice's certificate answers
        _call(number, _forward(), None, blocking, ssl_context=context, retries=0, server_name="bob")
    assert misnamed.value.code == grpc.StatusCode.UNAVAILABLE
    assert "certificate" in misnamed.value.details
    assert torch.equal(
        _call(number, _forward(), None, blocking, ssl_context=context).tensor, _expected(running)
    )
