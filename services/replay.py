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

from splitnn.wire.ops import OpKey

# Answers kept per (run, kind, segments): the ops one lane can have in flight at once
# (the micro-batches of a batch and the next), and a cap on the tensors they hold.
WINDOW = 16
LANE_BYTES = 256 << 20


def _lane(key: OpKey) -> tuple:
    return key.run_id, key.kind, key.segments


def _bytes(entry) -> int:
    """Tensor bytes an entry holds: an (op, answer) pair, or an answer."""
    parts = entry if isinstance(entry, tuple) else (entry,)
    tensors = [getattr(part, "tensor", None) for part in parts]
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class ReplayCache:
    """The recent answers per (run, op kind, segments), by batch id and micro-batch."""

    def __init__(self, window: int = WINDOW, lane_bytes: int = LANE_BYTES):
        self.window = window
        self.lane_bytes = lane_bytes
        self._answers: dict[tuple, OrderedDict[tuple[int, int], object]] = {}
        self._lock = threading.Lock()

    def get(self, key: OpKey):
        """The stored answer of the op with this key, if it is still remembered."""
        with self._lock:
            lane = self._answers.get(_lane(key))
            return None if lane is None else lane.get((key.batch_id, key.micro_batch))

    def put(self, key: OpKey, answer) -> None:
        """Remember the answer of the op just applied."""
        with self._lock:
            lane = self._answers.setdefault(_lane(key), OrderedDict())
            lane[(key.batch_id, key.micro_batch)] = answer
            while len(lane) > 1 and (
                len(lane) > self.window or sum(map(_bytes, lane.values())) > self.lane_bytes
            ):
                lane.popitem(last=False)

    def forget(self, key: OpKey) -> None:
        """Drop the stored answer of the op with this key, if any."""
        with self._lock:
            lane = self._answers.get(_lane(key))
            if lane is not None:
                lane.pop((key.batch_id, key.micro_batch), None)

    def forget_segment(self, run_id: str, index: int) -> None:
        """Drop answers that involve a segment being dropped or replaced."""
        with self._lock:
            for lane in [k for k in self._answers if k[0] == run_id and index in k[2]]:
                del self._answers[lane]
