"""The standard gRPC health service and server reflection on a worker.

With these, any gRPC tool can probe a worker without splitnn's protos:

    grpcurl -plaintext HOST:50051 grpc.health.v1.Health/Check
    grpcurl -plaintext HOST:50051 list
    splitnn health HOST:50051

Both services answer without knowing the job; they say the server is up and
accepts calls, nothing about the segments it holds.
"""

from __future__ import annotations

from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from splitnn.v1 import worker_pb2

WORKER_SERVICE = worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# The services whose health is reported: "" is the server as a whole.
HEALTH_CHECKED = ("", WORKER_SERVICE)


def add_health_and_reflection(server) -> health.HealthServicer:
    """Register health (SERVING for "" and the worker service) and reflection on `server`.

    Call before `server.start()`. Returns the health servicer, so a caller can
    report NOT_SERVING (e.g. `enter_graceful_shutdown()` before stopping).
    """
    servicer = health.HealthServicer()
    for service in HEALTH_CHECKED:
        servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection(
        (WORKER_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server
    )
    return servicer


def add_health_only(servicer: health.HealthServicer, server) -> None:
    """Serve `servicer` (the worker's own health) on another server, alone: a plaintext
    port for probes that cannot speak TLS (Kubernetes' gRPC probes), which answers
    nothing but grpc.health.v1."""
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
