"""Checkpoints: every segment's weights and optimizer state plus where training stood.

One file, DIR/checkpoint.safetensors, written atomically (a temporary file,
fsync, then rename): a crash while writing leaves the previous checkpoint
whole. The progress (turn, epoch, batch, step, segment placement, metrics so
far) rides in the safetensors metadata as JSON. The data order needs no state:
it is a function of (seed, turn, epoch).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from splitnn.errors import CheckpointError
from splitnn.orchestrator.outputs import write_atomic

CHECKPOINT_NAME = "checkpoint.safetensors"


@dataclass
class Cursor:
    """Where training stands: the next batch to train and the epoch's sums so far."""

    turn: int = 0
    epoch: int = 0
    batch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    batches: int = 0


@dataclass
class Checkpoint:
    """Everything a resumed run needs."""

    config_path: str
    cursor: Cursor
    location: dict[int, str]
    segment_states: list[dict[str, torch.Tensor]]
    final_loss: dict = field(default_factory=dict)
    final_test: dict = field(default_factory=dict)
    samples: int = 0
    train_seconds: float = 0.0
    metrics_lines: int = 0
    extra: dict = field(default_factory=dict)  # a schedule's own progress (SplitFed's)


def save_checkpoint(out_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write DIR/checkpoint.safetensors atomically."""
    tensors = {}
    for index, state in enumerate(checkpoint.segment_states):
        for key, value in state.items():
            tensors[f"{index}.{key}"] = value.detach().contiguous()
    progress = {
        "config_path": checkpoint.config_path,
        "cursor": asdict(checkpoint.cursor),
        "location": {str(k): v for k, v in checkpoint.location.items()},
        "segments": len(checkpoint.segment_states),
        "final_loss": checkpoint.final_loss,
        "final_test": checkpoint.final_test,
        "samples": checkpoint.samples,
        "train_seconds": checkpoint.train_seconds,
        "metrics_lines": checkpoint.metrics_lines,
        "extra": checkpoint.extra,
    }
    path = Path(out_dir) / CHECKPOINT_NAME
    write_atomic(path, save(tensors, metadata={"progress": json.dumps(progress)}))
    return path


def load_checkpoint(out_dir: Path) -> Checkpoint:
    """Read DIR/checkpoint.safetensors."""
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: --resume takes a run directory that "
            "`splitnn train` checkpointed (at handovers, every --checkpoint-every steps)"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            progress = json.loads(f.metadata()["progress"])
            states: list[dict] = [{} for _ in range(progress["segments"])]
            for key in f.keys():
                index, _, rest = key.partition(".")
                states[int(index)][rest] = f.get_tensor(key)
        return Checkpoint(
            config_path=progress["config_path"],
            cursor=Cursor(**progress["cursor"]),
            location={int(k): v for k, v in progress["location"].items()},
            segment_states=states,
            final_loss=progress["final_loss"],
            final_test=progress["final_test"],
            samples=progress["samples"],
            train_seconds=progress["train_seconds"],
            metrics_lines=progress["metrics_lines"],
            extra=progress.get("extra", {}),
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError, SafetensorError) as err:
        raise CheckpointError(f"cannot read the checkpoint {path}: {err}") from None
