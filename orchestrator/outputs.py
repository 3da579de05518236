"""What a run leaves behind: the model, a metrics log and a report, all readable files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file


def model_state(segment_states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Keys of nn.Sequential(*segments).state_dict(): "<segment>.<layer>.<param>"."""
    out = {}
    for index, state in enumerate(segment_states):
        for key, value in state.items():
            if key.startswith("model."):
                out[f"{index}.{key[6:]}"] = value.contiguous()
    return out


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file so that a crash leaves either the old file or the new one, whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_model(path: Path, state: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """The whole model as safetensors, written atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    os.replace(tmp, path)


class MetricsLog:
    """metrics.jsonl: one JSON object per logged epoch or evaluation, flushed as it goes;
    `sinks` (orchestrator.metric_sinks) get each record too."""

    def __init__(self, path: Path, append: bool = False, sinks=()):
        self.path = path
        self.lines = len(read_metrics(path)) if append and path.is_file() else 0
        self._file = open(path, "a" if append else "w")
        self.sinks = list(sinks)

    def write(self, record: dict) -> None:
        """Append one record and flush it, so an interrupted run keeps what it logged."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.lines += 1
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        self._file.close()
        for sink in self.sinks:
            sink.close()


def read_metrics(path: Path) -> list[dict]:
    """All records of a metrics.jsonl, skipping a torn last line."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def write_report(path: Path, report: dict) -> None:
    """report.json, written atomically."""
    write_atomic(path, (json.dumps(report, indent=2, default=str) + "\n").encode())
