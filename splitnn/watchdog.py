"""Cancel a gRPC call that makes no progress for too long, so nothing hangs forever.

Keepalive pings notice a dead link; this notices a live link to a peer that
has stopped answering. One thread per watchdog, re-armed per wait.
"""

from __future__ import annotations

import threading
import time


class Watchdog:
    """Cancels the armed call when its deadline passes before disarm()."""

    def __init__(self):
        self._cond = threading.Condition()
        self._call = None
        self._deadline = 0.0
        self.fired = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def arm(self, call, seconds: float) -> None:
        """Watch `call` (anything with cancel()) for `seconds` from now."""
        with self._cond:
            self._call, self._deadline, self.fired = call, time.monotonic() + seconds, False
            self._cond.notify()

    def disarm(self) -> None:
        """The call made progress in time."""
        with self._cond:
            self._call = None

    def _run(self) -> None:
        with self._cond:
            while True:
                if self._call is None:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                call, self._call, self.fired = self._call, None, True
                call.cancel()
