"""Answers to recent training ops, so that a retried op is applied once.

Every op carries its OpKey (run, kind, segments, batch id, micro-batch; see
splitnn.wire.ops). Several ops may be in flight per run (micro-batches, several
owners), so a retry may repeat any recent op, not only the latest: the cache
keeps the last WINDOW answers per (run, kind, segments), oldest dropped first,
and no more than LANE_BYTES of their tensors (the latest answer is always kept).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from splitnn.wire.ops import Answer, Op, OpKey

# Answers kept per (run, kind, segments): the ops one lane can have in flight at once
# (the micro-batches of a batch and the next), and a cap on the tensors they hold.
WINDOW = 16
LANE_BYTES = 256 << 20


def _lane(key: OpKey) -> tuple:
    return key.run_id, key.kind, key.segments


def _bytes(entry: tuple[Op, Answer]) -> int:
    """Tensor bytes an (op, answer) entry holds."""
    return sum(
        t.numel() * t.element_size() for t in (entry[0].tensor, entry[1].tensor) if t is not None
    )


class _Lane:
    """The entries of one (run, kind, segments), oldest first, and their tensor bytes."""

    __slots__ = ("answers", "nbytes")

    def __init__(self):
        self.answers: OrderedDict[tuple[int, int], tuple[Op, Answer]] = OrderedDict()
        self.nbytes = 0


class ReplayCache:
    """The recent answers per (run, op kind, segments), by batch id and micro-batch."""

    def __init__(self, window: int = WINDOW, lane_bytes: int = LANE_BYTES):
        self.window = window
        self.lane_bytes = lane_bytes
        self._lanes: dict[tuple, _Lane] = {}
        self._lock = threading.Lock()
        self.replayed = 0  # retried ops answered from here (for metrics)

    def count_replay(self) -> None:
        """A retried op got its stored answer."""
        with self._lock:
            self.replayed += 1

    def get(self, key: OpKey) -> tuple[Op, Answer] | None:
        """The op applied under this key and its answer, if still remembered."""
        lane = self._lanes.get(_lane(key))
        return None if lane is None else lane.answers.get((key.batch_id, key.micro_batch))

    def put(self, key: OpKey, op: Op, answer: Answer) -> None:
        """Remember the op just applied under `key`, and its answer."""
        entry = (op, answer)
        with self._lock:
            lane = self._lanes.get(_lane(key))
            if lane is None:
                lane = self._lanes[_lane(key)] = _Lane()
            ids = (key.batch_id, key.micro_batch)
            old = lane.answers.pop(ids, None)
            if old is not None:
                lane.nbytes -= _bytes(old)
            lane.answers[ids] = entry
            lane.nbytes += _bytes(entry)
            while len(lane.answers) > 1 and (
                len(lane.answers) > self.window or lane.nbytes > self.lane_bytes
            ):
                _, dropped = lane.answers.popitem(last=False)
                lane.nbytes -= _bytes(dropped)

    def forget(self, key: OpKey) -> None:
        """Drop the stored entry of the op with this key, if any."""
        with self._lock:
            lane = self._lanes.get(_lane(key))
            if lane is not None:
                dropped = lane.answers.pop((key.batch_id, key.micro_batch), None)
                if dropped is not None:
                    lane.nbytes -= _bytes(dropped)

    def forget_segment(self, run_id: str, index: int) -> None:
        """Drop answers that involve a segment being dropped or replaced."""
        with self._lock:
            for lane in [k for k in self._lanes if k[0] == run_id and index in k[2]]:
                del self._lanes[lane]

    def lane_sizes(self) -> list[int]:
        """How many answers each lane keeps (for tests and status)."""
        with self._lock:
            return [len(lane.answers) for lane in self._lanes.values()]
