"""`splitnn evaluate`: a saved model's loss and accuracy on each owner's test set."""

from __future__ import annotations

import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file

from splitnn.errors import RunError
from splitnn.orchestrator.config import Config
from splitnn.orchestrator.trainer import Trainer
from splitnn.training.pipeline import plan_stages


def split_model_state(config: Config, state: dict[str, torch.Tensor]) -> list[dict]:
    """model.safetensors keys ("<segment>.<key>") back into per-segment states."""
    segments: list[dict] = [{} for _ in config.segments]
    for key, value in state.items():
        index_text, _, rest = key.partition(".")
        if not index_text.isdigit() or int(index_text) >= len(segments):
            raise RunError(f"model file key {key!r} names no segment of {config.path}")
        segments[int(index_text)][f"model.{rest}"] = value
    return segments


def evaluate_model(config: Config, clients: dict, model_path: Path, dataset: str | None) -> dict:
    """For each owner: load the model into its placement, evaluate, drop it again."""
    dataset = dataset or config.test_dataset or config.dataset
    states = split_model_state(config, load_file(str(model_path)))
    results = {}
    for owner in dict.fromkeys(config.owners):
        trainer = Trainer(config, clients, Path("."), run_id=uuid.uuid4().hex)
        trainer._check_workers(extra=[dataset])
        placement = config.placement(owner)
        try:
            trainer.hosts.load([placement[seg.index] for seg in config.segments], states)
            results[owner] = trainer.evaluate(owner, plan_stages(placement), dataset)
        finally:
            trainer.cleanup()
    return results
