"""Loss and accuracy of a trained chain on an owner's test set, keeping no state."""

from __future__ import annotations

from splitnn.orchestrator.batches import drive_batches
from splitnn.training.pipeline import Pipeline


def summarize_eval(loss: str, results) -> dict:
    """Dataset-level test loss and accuracy from per-batch results: summed losses add
    up, mean losses are weighted by batch rows."""
    rows = sum(r.count for r in results)
    if loss == "sum_squared_error":
        total = sum(r.loss for r in results)
    else:
        total = sum(r.loss * r.count for r in results) / rows if rows else 0.0
    correct = sum(r.correct for r in results)
    return {"test_loss": total, "test_accuracy": correct / rows if rows else None}


def evaluate_chain(clients, owner, run_id, stages, config, dataset, rows, relay) -> dict:
    """The chain of `run_id` on `rows` rows of the owner's `dataset`, in batches of the
    config's eval_batch_size: through the owner's worker, or relayed here."""
    size = config.eval_batch_size
    batches = [list(range(i, min(i + size, rows))) for i in range(0, rows, size)]
    if relay:
        pipeline = Pipeline(clients, run_id, stages, config.loss)
        results = [pipeline.evaluate_batch(0, dataset, b) for b in batches]
    else:
        results = list(
            drive_batches(
                clients, owner, run_id, stages, config.loss, dataset, 0, batches, evaluate=True
            )
        )
    return summarize_eval(config.loss, results)
