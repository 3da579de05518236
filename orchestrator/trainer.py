"""The training schedule across data owners: load, train in turn, hand over, save."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from splitnn.errors import RunError, SplitnnError, WorkerError
from splitnn.orchestrator.batches import drive_batches, relay_batches
from splitnn.orchestrator.checkpoint import Checkpoint, Cursor, save_checkpoint
from splitnn.orchestrator.config import Config
from splitnn.orchestrator.outputs import (
    MetricsLog,
    model_state,
    read_metrics,
    save_model,
    write_report,
)
from splitnn.orchestrator.results import plot_curves, preload_plotting
from splitnn.orchestrator.segments import SegmentPlacement
from splitnn.orchestrator.splitfed import SplitFedRounds
from splitnn.orchestrator.test_sets import evaluate_chain
from splitnn.training import schedule
from splitnn.training.pipeline import Pipeline, plan_stages
from splitnn.transport.client import WorkerClient
from splitnn.wire.compress import wire_format

# Rows of batch indices sent in one Drive call (keeps requests well under the limit).
MAX_ROWS_PER_CALL = 1_000_000


def _truncate_lines(path: Path, keep: int) -> None:
    """Keep the first `keep` lines of a file (drop metrics logged after a checkpoint)."""
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)[:keep]
        path.write_text("".join(lines))


@dataclass
class Trainer:
    """Runs one config against connected workers and writes the outputs to `out_dir`."""

    config: Config
    clients: dict[str, WorkerClient]
    out_dir: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    show_progress: bool | None = None
    # relay: the orchestrator carries every activation between workers (one
    # more hop per stage); otherwise the owner's worker drives the chain.
    relay: bool = False
    on_epoch: Callable[[dict], None] | None = None
    # Where metrics records go besides metrics.jsonl (orchestrator.metric_sinks).
    sinks: list = field(default_factory=list)

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        self.cursor = Cursor()
        self._metrics: MetricsLog | None = None
        self.hosts = SegmentPlacement(self.config, self.clients, self.run_id)
        self.final_loss: dict[str, float] = {}
        self._traffic_start: dict[str, tuple[int, int]] = {}
        self.final_test: dict[str, dict] = {}
        self.train_seconds = 0.0  # time spent training, without setup and handovers
        self.samples = 0
        self.splitfed = SplitFedRounds(self) if self.config.schedule == "splitfed" else None
        if self.splitfed is not None and self.relay:
            raise RunError(
                'schedule = "splitfed" runs with the owners\' workers driving, not --relay'
            )

    @property
    def location(self) -> dict[int, str]:
        """Which host holds each segment now."""
        return self.hosts.location

    def run(self, keep_segments: bool = False, resume: Checkpoint | None = None) -> dict:
        """Train the whole schedule; return the report (also written to report.json).

        With `resume`, continue from a checkpoint instead of the initial weights.
        The workers forget the run's segments at the end unless `keep_segments`
        (then call cleanup() when done with them); on a failure or an interrupt they
        forget them in any case (a checkpoint on disk is what --resume reads)."""
        config = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        preload_plotting()
        for name, client in self.clients.items():
            status = client.status()
            self._traffic_start[name] = (status.bytes_received, status.bytes_sent)
        self._check_workers()
        if resume is not None:
            _truncate_lines(self.out_dir / "metrics.jsonl", resume.metrics_lines)
        metrics = MetricsLog(self.out_dir / "metrics.jsonl", append=resume is not None)
        try:
            if resume is None:
                (self.splitfed or self.hosts).load_initial()
            else:
                self._restore(resume)
            for sink in self.sinks:
                sink.open(self)
                metrics.sinks.append(sink)
            self._metrics = metrics
            total = (
                sum(
                    schedule.batch_count(self.rows_of(o, config.dataset), config.batch_size)
                    for o in config.owners
                )
                * config.epochs
                * config.rounds
            )
            disable = None if self.show_progress is None else not self.show_progress
            bar = tqdm(
                total=total,
                initial=self.cursor.step,
                disable=disable,
                unit="step",
                dynamic_ncols=True,
            )
            with bar:
                if self.splitfed is not None:
                    self._train_rounds(self.splitfed, metrics, bar)
                else:
                    for turn in schedule.turns(config.owners, config.rounds):
                        if turn.index >= self.cursor.turn:
                            self._train_turn(turn, metrics, bar)
            if self.splitfed is not None:
                states = self.splitfed.global_states
            else:
                states = self.hosts.export_all()
            save_model(
                self.out_dir / "model.safetensors", model_state(states), {"run_id": self.run_id}
            )
            plot_curves(
                read_metrics(self.out_dir / "metrics.jsonl"),
                self.out_dir / "curves.png",
                config.name,
            )
        except BaseException as err:
            # Failed, interrupted (Ctrl-C, SIGTERM) or killed midway: nothing of this run
            # stays on the workers. What --resume needs is the checkpoint on disk.
            self.cleanup()
            if isinstance(err, WorkerError):
                raise RunError(
                    f"{err} (owner {self._owner_at(self.cursor.turn)}, turn "
                    f"{self.cursor.turn}, epoch {self.cursor.epoch + 1}, step "
                    f"{self.cursor.step + 1}); outputs so far are in {self.out_dir}/"
                ) from None
            raise
        finally:
            metrics.close()
            report = self._report(time.monotonic() - started)
            write_report(self.out_dir / "report.json", report)
        if not keep_segments:
            self.cleanup()
        return report

    def _train_rounds(self, rounds: SplitFedRounds, metrics, bar) -> None:
        """SplitFed: the rounds not trained yet, a checkpoint at each round's end."""
        owners = len(rounds.owners)
        for r in range(self.config.rounds):
            if r * owners >= self.cursor.turn:
                rounds.train_round(r, metrics, bar)
                if r + 1 < self.config.rounds:
                    self.checkpoint()

    def checkpoint(self) -> Path:
        """Write the run's state to DIR/checkpoint.safetensors (atomically)."""
        for client in self.clients.values():
            client.drain()
        extra: dict = {}
        if self.splitfed is not None:
            states, extra = self.splitfed.checkpoint_states()
        else:
            states = self.hosts.export_all()
        return save_checkpoint(
            self.out_dir,
            Checkpoint(
                config_path=str(self.config.path),
                cursor=replace(self.cursor),
                location=dict(self.location),
                segment_states=states,
                final_loss=dict(self.final_loss),
                final_test=dict(self.final_test),
                samples=self.samples,
                train_seconds=self.train_seconds,
                metrics_lines=self._metrics.lines if self._metrics else 0,
                extra=extra,
            ),
        )

    def _restore(self, resume: Checkpoint) -> None:
        config = self.config
        if len(resume.segment_states) != len(config.segments):
            raise RunError("the checkpoint does not match this config's segments")
        if self.splitfed is not None:
            self.splitfed.restore(resume.segment_states, resume.extra)
        else:
            hosts = [resume.location[seg.index] for seg in config.segments]
            self.hosts.load(hosts, resume.segment_states)
        self.cursor = replace(resume.cursor)
        self.final_loss, self.final_test = dict(resume.final_loss), dict(resume.final_test)
        self.samples, self.train_seconds = resume.samples, resume.train_seconds

    # ---- steps of the run ------------------------------------------------------

    def _check_workers(self, extra: list[str] = ()) -> None:
        config = self.config
        self._datasets = {}
        for owner in config.owners:
            status = self.clients[owner].status()
            datasets = {d.name: d for d in status.datasets}
            self._datasets[owner] = datasets
            wanted = [config.dataset] + ([config.test_dataset] if config.test_dataset else [])
            wanted += list(extra)
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

    def _owner_at(self, turn: int) -> str:
        return self.config.owners[turn % len(self.config.owners)]

    def rows_of(self, owner: str, dataset: str) -> int:
        """Rows of a dataset on an owner's worker (after _check_workers)."""
        return self._datasets[owner][dataset].rows

    def _train_turn(self, turn: schedule.Turn, metrics: MetricsLog, bar) -> None:
        config, owner, cursor = self.config, turn.owner, self.cursor
        placement = config.placement(owner)
        if self.hosts.hand_over(placement) and cursor.step > 0:
            self.checkpoint()
        stages = plan_stages(placement)
        pipeline = Pipeline(
            self.clients,
            self.run_id,
            stages,
            config.loss,
            config.micro_batches,
            wire=wire_format(config.wire),
        )
        turn_started = time.perf_counter()
        while cursor.epoch < config.epochs:
            call = self._next_call(turn)
            first_id = cursor.step + 1
            flat = [item[3] for item in call]
            if self.relay:
                results = iter(relay_batches(pipeline, config.dataset, first_id, flat))
            else:
                results = iter(
                    drive_batches(
                        self.clients,
                        owner,
                        self.run_id,
                        stages,
                        config.loss,
                        config.dataset,
                        first_id,
                        flat,
                        micro_batches=config.micro_batches,
                        chain=config.route == "chain",
                        wire=wire_format(config.wire),
                    )
                )
            for position, ((epoch, batch, n_batches, _), result) in enumerate(
                zip(call, results, strict=False)
            ):
                cursor.step += 1
                cursor.loss_sum += result.loss
                cursor.correct += result.correct
                cursor.count += result.count
                cursor.batches += 1
                self.samples += result.count
                bar.update(1)
                if batch < n_batches - 1:
                    cursor.batch = batch + 1
                    continue
                test = None
                if position == len(call) - 1:
                    for _ in results:  # let the stream finish (flush on the relay path)
                        pass
                    if self._eval_due(epoch):
                        test = self.evaluate(owner, stages)
                train = (cursor.loss_sum / cursor.batches, cursor.correct, cursor.count)
                self._end_epoch(turn, epoch, train, test, metrics)
                bar.set_postfix(owner=owner, epoch=epoch + 1, loss=f"{train[0]:.4f}")
                replace_cursor = Cursor(turn=cursor.turn, epoch=epoch + 1, step=cursor.step)
                self.cursor = cursor = replace_cursor
            for _ in results:
                pass
            every = config.checkpoint_every
            if every and cursor.step % every == 0 and cursor.epoch < config.epochs:
                self.checkpoint()
        self.train_seconds += time.perf_counter() - turn_started
        self.cursor = Cursor(turn=turn.index + 1, step=cursor.step)

    def _next_call(self, turn: schedule.Turn) -> list[tuple]:
        """The batches sent in one go, as (epoch, batch, batches in epoch, rows): from the
        cursor up to a checkpoint step, an evaluation, the end of the turn, or
        MAX_ROWS_PER_CALL rows."""
        config, cursor, owner = self.config, self.cursor, turn.owner
        call, rows_sent = [], 0
        every = config.checkpoint_every
        epoch, batch = cursor.epoch, cursor.batch
        while epoch < config.epochs:
            batches = schedule.batches(
                config.seed,
                turn.index,
                epoch,
                self.rows_of(owner, config.dataset),
                config.batch_size,
                config.shuffle,
            )
            while batch < len(batches):
                call.append((epoch, batch, len(batches), batches[batch]))
                rows_sent += len(batches[batch])
                batch += 1
                step = cursor.step + len(call)
                if (every and step % every == 0) or rows_sent >= MAX_ROWS_PER_CALL:
                    return call
            if self._eval_due(epoch):
                return call
            epoch, batch = epoch + 1, 0
        return call

    def _eval_due(self, epoch: int) -> bool:
        config = self.config
        if not config.test_dataset:
            return False
        every = config.eval_every
        return epoch + 1 == config.epochs or (every > 0 and (epoch + 1) % every == 0)

    def _end_epoch(self, turn, epoch: int, train: tuple, test: dict | None, metrics) -> None:
        config = self.config
        loss, correct, count = train
        record = {
            "owner": turn.owner,
            "round": turn.round,
            "turn": turn.index,
            "epoch": epoch + 1,
            "step": self.cursor.step,
            "loss": loss,
            "accuracy": correct / count if count else None,
        }
        if test is not None:
            record.update(test)
            self.final_test[turn.owner] = test
        self.final_loss[turn.owner] = loss
        if (epoch + 1) % config.log_every == 0 or epoch + 1 == config.epochs or test:
            metrics.write(record)
        if self.on_epoch is not None:
            self.on_epoch(record)

    def evaluate(self, owner: str, stages, dataset: str | None = None, run_id=None) -> dict:
        """Loss and accuracy on the owner's test set through the whole chain, keeping
        no backward state on any worker; `run_id`: another run's segments (an owner's
        SplitFed copy)."""
        dataset = dataset or self.config.test_dataset
        return evaluate_chain(
            self.clients,
            owner,
            run_id or self.run_id,
            stages,
            self.config,
            dataset,
            self.rows_of(owner, dataset),
            self.relay,
        )

    def _report(self, wall_time: float) -> dict:
        return {
            "run_id": self.run_id,
            "config": self.config.raw,
            "config_path": str(self.config.path),
            "final_loss": self.final_loss,
            "final_test": self.final_test,
            "steps": self.cursor.step,
            "wall_time_s": round(wall_time, 3),
            "train_time_s": round(self.train_seconds, 3),
            "samples_per_s": round(self.samples / self.train_seconds, 1)
            if self.train_seconds
            else None,
            "mode": "relay" if self.relay else "owner-driven",
            "bytes": self.traffic(),
        }

    def traffic(self) -> dict:
        """Bytes each worker received and sent during the run, as the workers count them
        (this includes worker-to-worker traffic when an owner drives)."""
        traffic = {}
        for name, client in self.clients.items():
            try:
                status = client.status()
            except SplitnnError:
                continue
            start = self._traffic_start.get(name, (0, 0))
            traffic[name] = {
                "received": status.bytes_received - start[0],
                "sent": status.bytes_sent - start[1],
            }
        return traffic

    def cleanup(self) -> None:
        """Drop the run's segments from every worker (best effort)."""
        self.hosts.cleanup()
        if self.splitfed is not None:
            self.splitfed.cleanup()
