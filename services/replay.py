"""Answers to recent training ops, so that a retried op is applied once.

Forward, Backward and Step carry (run, segments, batch id). Training moves
forward one batch at a time, so a retry is always a repeat of the latest op
of its kind on those segments: keeping that one answer per key is enough.
"""

from __future__ import annotations

import threading


class ReplayCache:
    """The latest answer per (run, op kind, segments), with its batch id."""

    def __init__(self):
        self._answers: dict[tuple, tuple[int, object]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple, batch_id: int):
        """The stored answer if the latest op under `key` had this batch id."""
        with self._lock:
            entry = self._answers.get(key)
        if entry is not None and entry[0] == batch_id:
            return entry[1]
        return None

    def put(self, key: tuple, batch_id: int, answer) -> None:
        """Remember the answer of the op just applied."""
        with self._lock:
            self._answers[key] = (batch_id, answer)

    def forget(self, key: tuple, batch_id: int) -> None:
        """Drop the stored answer under `key` if it is the one for this batch."""
        with self._lock:
            entry = self._answers.get(key)
            if entry is not None and entry[0] == batch_id:
                del self._answers[key]

    def forget_segment(self, run_id: str, index: int) -> None:
        """Drop answers that involve a segment being dropped or replaced."""
        with self._lock:
            for key in [k for k in self._answers if k[0] == run_id and index in k[2]]:
                del self._answers[key]
