"""Where a run's metrics records go besides metrics.jsonl: TensorBoard event files
(`splitnn train --tensorboard DIR`) and log lines (`--log-format json`).

A sink is opened with the Trainer once its run is set up (so it can read the run id,
the step it resumes at and the workers' byte counters), then gets every record
metrics.jsonl gets, in the same order.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from splitnn.errors import RunError

log = logging.getLogger("splitnn.train")

# Per-owner curves: (record key, TensorBoard tag prefix).
CURVES = (
    ("loss", "loss"),
    ("accuracy", "accuracy"),
    ("test_loss", "test_loss"),
    ("test_accuracy", "test_accuracy"),
)


# The workers' byte counters cost a GetStatus per worker: read at most this often.
TRAFFIC_EVERY_S = 1.0


class TensorBoardLog:
    """Scalars per record: loss and accuracy per owner (train and test) and step time;
    the bytes each worker received and sent since the run began, at the first record
    and then at most every TRAFFIC_EVERY_S."""

    def __init__(self, directory: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise RunError(
                f"--tensorboard needs the tensorboard package ({err}): "
                "pip install 'splitnn[tensorboard]'"
            ) from None
        self._writer_class = SummaryWriter
        self.directory = Path(directory)
        self.writer = None
        self._trainer = None
        self._last: tuple[float, int] = (0.0, 0)
        self._traffic_at: float | None = None

    def open(self, trainer) -> None:
        """Start the event file; a resumed run drops the events logged after its checkpoint."""
        step = trainer.cursor.step
        self.writer = self._writer_class(
            log_dir=str(self.directory), purge_step=step if step else None
        )
        self._trainer = trainer
        self._last = (time.perf_counter(), step)

    def write(self, record: dict) -> None:
        step, owner = int(record["step"]), record["owner"]
        for key, tag in CURVES:
            if record.get(key) is not None:
                self.writer.add_scalar(f"{tag}/{owner}", float(record[key]), step)
        now, (then, last_step) = time.perf_counter(), self._last
        if step > last_step:
            self.writer.add_scalar("step_time_ms", (now - then) * 1e3 / (step - last_step), step)
            self._last = (now, step)
        if self._traffic_at is None or now - self._traffic_at >= TRAFFIC_EVERY_S:
            self._write_traffic(step)
            self._traffic_at = now
        self.writer.flush()

    def _write_traffic(self, step: int) -> None:
        total = 0
        for worker, traffic in self._trainer.traffic().items():
            self.writer.add_scalar(f"bytes_received/{worker}", traffic["received"], step)
            self.writer.add_scalar(f"bytes_sent/{worker}", traffic["sent"], step)
            total += traffic["received"]
        self.writer.add_scalar("bytes_received/all", total, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class LogLines:
    """One log line per record, with the run, the step and the record's values (read
    as JSON fields under --log-format json)."""

    def open(self, trainer) -> None:
        self.run_id = trainer.run_id

    def write(self, record: dict) -> None:
        parts = [f"{record['owner']} epoch {record.get('epoch')}"]
        for key, _ in CURVES:
            value = record.get(key)
            if value is not None:
                parts.append(f"{key} {value:.6g}")
        log.info(
            " ".join(parts),
            extra={"run": self.run_id, "step": record.get("step"), "fields": record},
        )

    def close(self) -> None:
        pass
