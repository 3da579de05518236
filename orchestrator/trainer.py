"""The training schedule across data owners: load, train in turn, hand over, save."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from orchestrator.client import WorkerClient
from orchestrator.config import Config
from orchestrator.outputs import MetricsLog, model_state, save_model, write_report
from orchestrator.pipeline import Pipeline, plan_stages
from splitnn import layers as layer_specs
from splitnn import schedule
from splitnn.errors import SplitnnError


class RunError(SplitnnError):
    """The run cannot go on; the message names the worker and where it stopped."""


def initial_states(config: Config) -> list[dict[str, torch.Tensor]]:
    """Segment weights as plain PyTorch builds them: manual_seed, then segments in order."""
    torch.manual_seed(config.seed)
    states = []
    for seg in config.segments:
        module = layer_specs.build_segment(seg.layers, f"segments[{seg.index}]")
        states.append({f"model.{k}": v.detach().clone() for k, v in module.state_dict().items()})
    return states


@dataclass
class Progress:
    """Where the run is: used for messages when something fails."""

    owner: str = ""
    turn: int = 0
    epoch: int = 0
    step: int = 0


@dataclass
class Trainer:
    """Runs one config against connected workers and writes the outputs to `out_dir`."""

    config: Config
    clients: dict[str, WorkerClient]
    out_dir: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    show_progress: bool | None = None
    on_epoch: Callable[[dict], None] | None = None

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        self.progress = Progress()
        self.location: dict[int, str] = {}
        self.final_loss: dict[str, float] = {}
        self.rows: dict[str, int] = {}

    def run(self, keep_segments: bool = False) -> dict:
        """Train the whole schedule; return the report (also written to report.json).

        The workers forget the run's segments at the end unless `keep_segments`
        (then call cleanup() when done with them)."""
        config = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self._check_workers()
        metrics = MetricsLog(self.out_dir / "metrics.jsonl")
        try:
            self._load_initial()
            total = (
                sum(
                    len(schedule.batches(0, 0, 0, self.rows[o], config.batch_size, False))
                    for o in config.owners
                )
                * config.epochs
                * config.rounds
            )
            disable = None if self.show_progress is None else not self.show_progress
            bar = tqdm(total=total, disable=disable, unit="step", dynamic_ncols=True)
            with bar:
                for turn in schedule.turns(config.owners, config.rounds):
                    self._train_turn(turn, metrics, bar)
            states = [self._export(i) for i in range(len(config.segments))]
            save_model(
                self.out_dir / "model.safetensors", model_state(states), {"run_id": self.run_id}
            )
        finally:
            metrics.close()
            report = self._report(time.monotonic() - started)
            write_report(self.out_dir / "report.json", report)
        if not keep_segments:
            self.cleanup()
        return report

    # ---- steps of the run ------------------------------------------------------

    def _check_workers(self) -> None:
        config = self.config
        for owner in config.owners:
            status = self.clients[owner].status()
            datasets = {d.name: d for d in status.datasets}
            wanted = [config.dataset] + ([config.test_dataset] if config.test_dataset else [])
            for name in wanted:
                if name not in datasets:
                    raise RunError(
                        f"worker {owner} serves no dataset {name!r} (it has {sorted(datasets)})"
                    )
                shape = list(datasets[name].x_shape)
                if shape != list(config.input_shape):
                    raise RunError(
                        f"worker {owner}: dataset {name!r} rows have shape {shape}, "
                        f"config input_shape is {config.input_shape}"
                    )
            self.rows[owner] = datasets[config.dataset].rows

    def _load_initial(self) -> None:
        config = self.config
        placement = config.placement(config.owners[0])
        for seg, state in zip(config.segments, initial_states(config), strict=True):
            host = placement[seg.index]
            self.clients[host].load_segment(
                self.run_id, seg.index, seg.layers, config.optimizer, state
            )
            self.location[seg.index] = host

    def _export(self, index: int) -> dict[str, torch.Tensor]:
        return self.clients[self.location[index]].export_segment(self.run_id, index)

    def _hand_over(self, placement: list[str]) -> None:
        """Move perimeter segments, weights and optimizer state both, to the new owner."""
        for seg in self.config.segments:
            old, new = self.location[seg.index], placement[seg.index]
            if old == new:
                continue
            self.clients[old].drain()
            state = self._export(seg.index)
            self.clients[new].load_segment(
                self.run_id, seg.index, seg.layers, self.config.optimizer, state
            )
            self.clients[old].drop_segment(self.run_id, seg.index)
            self.location[seg.index] = new

    def _train_turn(self, turn: schedule.Turn, metrics: MetricsLog, bar) -> None:
        config, owner = self.config, turn.owner
        placement = config.placement(owner)
        self._hand_over(placement)
        pipeline = Pipeline(self.clients, self.run_id, plan_stages(placement), config.loss)
        self.progress.owner, self.progress.turn = owner, turn.index
        for epoch in range(config.epochs):
            self.progress.epoch = epoch
            total_loss, correct, count, n = 0.0, 0, 0, 0
            for rows in schedule.batches(
                config.seed, turn.index, epoch, self.rows[owner], config.batch_size, config.shuffle
            ):
                self.progress.step += 1
                result = pipeline.train_step(self.progress.step, config.dataset, rows)
                total_loss += result.loss
                correct += result.correct
                count += result.count
                n += 1
                bar.update(1)
            pipeline.flush()
            record = {
                "owner": owner,
                "round": turn.round,
                "turn": turn.index,
                "epoch": epoch + 1,
                "step": self.progress.step,
                "loss": total_loss / n,
                "accuracy": correct / count if count else None,
            }
            self.final_loss[owner] = record["loss"]
            bar.set_postfix(owner=owner, epoch=epoch + 1, loss=f"{record['loss']:.4f}")
            if (epoch + 1) % config.log_every == 0 or epoch + 1 == config.epochs:
                metrics.write(record)
            if self.on_epoch is not None:
                self.on_epoch(record)

    def _report(self, wall_time: float) -> dict:
        return {
            "run_id": self.run_id,
            "config": self.config.raw,
            "config_path": str(self.config.path),
            "final_loss": self.final_loss,
            "steps": self.progress.step,
            "wall_time_s": round(wall_time, 3),
            "bytes": {
                name: {"sent_to_worker": c.bytes_sent, "received_from_worker": c.bytes_received}
                for name, c in self.clients.items()
            },
        }

    def cleanup(self) -> None:
        """Drop the run's segments from every worker (best effort)."""
        for index, host in self.location.items():
            try:
                self.clients[host].drop_segment(self.run_id, index)
            except SplitnnError:
                pass
