"""Sending batches down the chain: through the owner's worker (Drive) or relayed here."""

from __future__ import annotations

import time

import grpc

from splitnn.errors import WorkerError
from splitnn.model.losses import loss_kind
from splitnn.training.pipeline import Pipeline, Stage
from splitnn.transport.client import WorkerClient
from splitnn.v1 import worker_pb2


def relay_batches(pipeline: Pipeline, dataset: str, first_id: int, batches):
    """Train batches with this process carrying every tensor; yields StepResults."""
    for offset, rows in enumerate(batches):
        yield pipeline.train_step(first_id + offset, dataset, rows)
    pipeline.flush()


def drive_batches(
    clients: dict[str, WorkerClient],
    owner: str,
    run_id: str,
    stages: list[Stage],
    loss: str,
    dataset: str,
    first_id: int,
    batches,
    evaluate: bool = False,
    micro_batches: int = 1,
    chain: bool = False,
    wire: int = 0,
    quiet: bool = False,
):
    """Have the owner's worker train (or evaluate) batches; yields LossResults.

    A dropped link is retried with the batches not answered yet: the owner's worker
    knows which of them it already trained and does not train them twice.
    """
    request = worker_pb2.DriveRequest(
        run_id=run_id,
        loss=loss_kind(loss),
        dataset=dataset,
        mode=worker_pb2.FORWARD_MODE_EVAL if evaluate else worker_pb2.FORWARD_MODE_TRAIN,
        micro_batches=micro_batches,
        chain=chain,
        wire=wire,
        quiet=quiet,
    )
    for stage in stages:
        client = clients[stage.host]
        request.stages.add(
            host=stage.host,
            segments=stage.segments,
            address=client.address,
            server_name=client.server_name or "",
            data_address=client.data_address or "",
        )
    for offset, rows in enumerate(batches):
        request.batches.add(batch_id=first_id + (0 if evaluate else offset), indices=rows)
    client, answered = clients[owner], 0
    for attempt in range(client.retries + 1):
        if answered:
            remaining = list(request.batches)[answered:]
            del request.batches[:]
            request.batches.extend(remaining)
            answered = 0
        try:
            for result in client.drive(request):
                answered += 1
                yield result.loss
            return
        except WorkerError as err:
            if err.code != grpc.StatusCode.UNAVAILABLE or attempt == client.retries:
                raise
            time.sleep(client.backoff_delay(attempt))
