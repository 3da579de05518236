"""Prometheus metrics of a worker (`splitnn-worker --metrics-port`).

Counted as they happen: ops by kind and status, their latency, RPCs by method and
status. Read when scraped, from what the worker keeps anyway: bytes in and out,
segments and batches awaiting Backward per run, answers replayed to retried ops,
and the retries this worker made calling its peers. Each worker has a registry of
its own (several workers may share a process in tests).

Run ids appear as label values: the metrics port is plaintext and unauthenticated,
so expose it to the monitoring system only (deploy/kubernetes has a NetworkPolicy).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from splitnn.transport.client import RETRIES

# Op latency buckets, seconds: a tiny layer on loopback takes ~100 us, a conv block
# on a big batch seconds.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class WorkerMetrics:
    """What a worker counts for Prometheus; `servicer` is read at each scrape."""

    def __init__(self, servicer, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.ops = Counter(
            "splitnn_worker_ops",
            "Training ops served, by kind (forward, backward, step) and gRPC status",
            ["kind", "status"],
            registry=self.registry,
        )
        self.op_seconds = Histogram(
            "splitnn_worker_op_seconds",
            "Seconds to apply one training op (forward, backward, step), by kind",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rpcs = Counter(
            "splitnn_worker_rpcs",
            "RPCs served, by method and gRPC status",
            ["method", "status"],
            registry=self.registry,
        )
        self._children: dict[tuple, object] = {}
        self._lock = threading.Lock()
        self.registry.register(_ServicerCollector(servicer))

    def _child(self, metric, *labels):
        """A labelled child, looked up once (labels() takes a lock on every call)."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.setdefault(key, metric.labels(*labels))
        return child

    def op(self, kind: str, status: str, seconds: float) -> None:
        """One training op applied (status OK) or refused (the gRPC status's name)."""
        self._child(self.ops, kind, status).inc()
        if status == "OK":
            self._child(self.op_seconds, kind).observe(seconds)

    def rpc(self, method: str, status: str) -> None:
        """One RPC answered, with the status it ended with."""
        self._child(self.rpcs, method, status).inc()

    def serve(self, host: str, port: int) -> tuple[object, int]:
        """Serve /metrics over HTTP on host:port (0: any free); returns (server, port)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server, server.server_port


class _ServicerCollector:
    """Values the worker keeps anyway, read when Prometheus scrapes."""

    def __init__(self, servicer):
        self.servicer = servicer

    def describe(self) -> list:
        return []  # values change with the runs; collected fresh at every scrape

    def collect(self) -> Iterator:
        servicer, host = self.servicer, self.servicer.host
        received = CounterMetricFamily(
            "splitnn_worker_received_bytes", "Bytes of request messages received"
        )
        received.add_metric([], servicer.bytes_received)
        sent = CounterMetricFamily("splitnn_worker_sent_bytes", "Bytes of answers sent")
        sent.add_metric([], servicer.bytes_sent)
        replayed = CounterMetricFamily(
            "splitnn_worker_replayed_ops",
            "Retried ops answered from the replay window instead of running again",
        )
        replayed.add_metric([], host.replay.replayed)
        retries = CounterMetricFamily(
            "splitnn_worker_retries",
            "Calls this worker retried toward its peers (driving or forwarding a chain)",
            labels=["call"],
        )
        for call, count in sorted(RETRIES.counts().items()):
            retries.add_metric([call], count)
        segments = GaugeMetricFamily(
            "splitnn_worker_segments", "Segments hosted, per run", labels=["run"]
        )
        pending = GaugeMetricFamily(
            "splitnn_worker_pending_batches",
            "Batches run forward and awaiting Backward, per run",
            labels=["run"],
        )
        per_run: dict[str, int] = {}
        for segment in host.segments():
            per_run[segment.run_id] = per_run.get(segment.run_id, 0) + 1
        for run_id in sorted(per_run):
            segments.add_metric([run_id], per_run[run_id])
            pending.add_metric([run_id], len(host.pending_batches(run_id)))
        up = GaugeMetricFamily("splitnn_worker_start_time_seconds", "When this worker started")
        up.add_metric([], self.servicer.started)
        yield from (received, sent, replayed, retries, segments, pending, up)
