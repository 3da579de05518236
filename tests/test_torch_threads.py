"""A worker's threads do their arithmetic with the process's torch thread count.

torch.set_num_threads reaches OpenMP only in the calling thread; gRPC handler
threads and the driver's loop thread would otherwise start an OpenMP team per
core for each matrix product, whose idle members spin and take a core.
"""

from __future__ import annotations

import asyncio
import ctypes
import os

import grpc
import pytest
import torch

from splitnn.services.driver import Driver
from splitnn.services.segment_host import SegmentHost
from splitnn.transport.channels import create_server


def _openmp():
    # torch's own OpenMP runtime: other packages loaded by earlier tests may bring theirs.
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    paths = [
        line.split()[-1]
        for line in open("/proc/self/maps")
        if "libgomp" in line and line.split()[-1].startswith(torch_lib)
    ]
    if not paths or (os.cpu_count() or 1) < 2:
        pytest.skip("needs torch's libgomp and more than one core")
    return ctypes.CDLL(paths[0])


@pytest.fixture
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_server_handler_threads_use_one_openmp_thread(one_torch_thread):
    openmp = _openmp()
    server, port = create_server("127.0.0.1:0")
    handler = grpc.unary_unary_rpc_method_handler(
        lambda request, context: str(openmp.omp_get_max_threads()).encode(),
        request_deserializer=None,
        response_serializer=None,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("probe.Probe", {"Threads": handler})]
    )
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = channel.unary_unary("/probe.Probe/Threads")(b"", timeout=10)
    finally:
        server.stop(None).wait()
    assert answer == b"1"


def test_driver_loop_thread_uses_one_openmp_thread(one_torch_thread):
    openmp = _openmp()
    driver = Driver(SegmentHost("alice", {}))

    async def probe():
        return openmp.omp_get_max_threads()

    future = asyncio.run_coroutine_threadsafe(probe(), driver._event_loop())
    assert future.result(timeout=10) == 1
