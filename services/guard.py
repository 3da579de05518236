"""Slow or idle callers cannot starve a worker.

gRPC's synchronous server ties one handler thread to each call for as long as it
lasts, so a caller that opens streams and goes quiet holds threads. Two bounds:

- CallSlots: one identity holds at most `per_identity` calls at once; more are
  answered RESOURCE_EXHAUSTED at once, which costs a thread for microseconds.
- IdleWatch: a stream whose caller has sent nothing for `idle_seconds` (half a
  tensor, or nothing at all) is cancelled, and its thread comes back. Clients
  reopen such a stream when they next need it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator

from splitnn.errors import ResourceExhausted

DEFAULT_CALLS_PER_IDENTITY = 16
DEFAULT_IDLE_SECONDS = 120.0


class CallSlots:
    """Counts the calls each identity holds; refuses one more than `per_identity`."""

    def __init__(self, per_identity: int = DEFAULT_CALLS_PER_IDENTITY):
        self.per_identity = per_identity
        self._held: Counter = Counter()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, identity: str | None):
        """Hold one slot of `identity` for the duration of a call."""
        with self._lock:
            if self._held[identity] >= self.per_identity:
                raise ResourceExhausted(
                    f"{identity or 'this caller'} already holds {self.per_identity} calls here"
                )
            self._held[identity] += 1
        try:
            yield
        finally:
            with self._lock:
                self._held[identity] -= 1
                if not self._held[identity]:
                    del self._held[identity]

    def held(self, identity: str | None) -> int:
        """Calls `identity` holds now."""
        with self._lock:
            return self._held[identity]


class IdleWatch:
    """Cancels the calls whose request stream stayed silent for `idle_seconds`."""

    def __init__(self, idle_seconds: float = DEFAULT_IDLE_SECONDS):
        self.idle_seconds = idle_seconds
        self._last: dict[int, tuple[object, float]] = {}  # id -> (context, last message)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def messages(self, context, requests) -> Iterator:
        """The request stream of a call, watched: the clock runs only while the handler
        waits for the caller's next message, not while it works on the last one."""
        key, stream = id(context), iter(requests)
        try:
            while True:
                self._wait(key, context)
                try:
                    message = next(stream)
                except StopIteration:
                    return
                finally:
                    self._stop(key)
                yield message
        finally:
            self._stop(key)

    def _wait(self, key: int, context) -> None:
        # One dict store per message, atomic under the GIL: no lock on the hot path.
        self._last[key] = (context, time.monotonic())
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="idle-watch", daemon=True
                    )
                    self._thread.start()

    def _stop(self, key: int) -> None:
        self._last.pop(key, None)

    def _run(self) -> None:
        period = max(0.05, min(1.0, self.idle_seconds / 4))
        while True:
            time.sleep(period)
            now = time.monotonic()
            entries = list(self._last.items())  # a copy: handlers change the dict meanwhile
            for key, entry in entries:
                context, since = entry
                # Still the same silence (no message came since the copy): cancel it.
                if now - since > self.idle_seconds and self._last.get(key) is entry:
                    self._last.pop(key, None)
                    context.cancel()  # type: ignore[attr-defined]
