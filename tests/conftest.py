"""Shared fixtures: an in-process worker (real gRPC server on a free loopback port)."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from splitnn.data.datasets import TOY_NAME, builtin
from splitnn.services.segment_host import Limits, SegmentHost
from splitnn.v1 import worker_pb2_grpc


def pytest_configure(config):
    # splitnn.wire.codec silences this torch warning at import (it clones the buffer right after);
    # pytest resets warning filters for every test, so say it again here.
    config.addinivalue_line("filterwarnings", "ignore:The given buffer is not writable:UserWarning")


class RunningWorker(NamedTuple):
    """A worker serving in this process: its host object, a stub on it, its address."""

    host: SegmentHost
    stub: worker_pb2_grpc.WorkerServiceStub
    address: str
    servicer: object = None  # its services.servicer.WorkerServicer


def start_worker(
    name: str = "alice", limits: Limits | None = None, peer_factory=None, **servicer_options
):
    """Start a worker on 127.0.0.1:0; returns (RunningWorker, stop function). With
    `peer_factory`, its driver makes its peer clients with it (Driver.client_factory);
    `servicer_options` go to WorkerServicer (access, slots, idle)."""
    # Imported here so that tests without a network do not depend on the gRPC side.
    from splitnn.services.driver import Driver
    from splitnn.services.registration import add_worker_service
    from splitnn.services.servicer import WorkerServicer
    from splitnn.transport.channels import create_channel, create_server
    from splitnn.wire import codec

    host = SegmentHost(name, {TOY_NAME: builtin(TOY_NAME)}, limits or Limits())
    driver = Driver(host, peer_factory)
    server, port = create_server("127.0.0.1:0")
    servicer = WorkerServicer(host, codec.DEFAULT_CHUNK_BYTES, driver=driver, **servicer_options)
    add_worker_service(servicer, server)
    server.start()
    address = f"127.0.0.1:{port}"
    # No channel_ready_future: the server already listens, and watching connectivity
    # would cost ~0.2 s at close (grpc polls channel state every 0.2 s).
    channel = create_channel(address)

    def stop() -> None:
        channel.close()
        server.stop(grace=None).wait(timeout=10)

    stub = worker_pb2_grpc.WorkerServiceStub(channel)
    return RunningWorker(host, stub, address, servicer), stop


@pytest.fixture
def worker():
    """A fresh in-process worker named alice with the built-in toy dataset."""
    running, stop = start_worker()
    try:
        yield running
    finally:
        stop()
