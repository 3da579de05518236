"""Cancel a gRPC call that makes no progress for too long, so nothing hangs forever.

Keepalive pings notice a dead link; this notices a live link to a peer that
has stopped answering. Arming and disarming only set two fields (the hot path
pays no thread wake-up); one thread checks them twice a second.
"""

from __future__ import annotations

import threading
import time
from typing import Any

CHECK_SECONDS = 0.5


class Watchdog:
    """Cancels the armed call when its deadline passes before disarm()."""

    def __init__(self):
        self._call: Any = None  # anything with cancel()
        self._deadline = 0.0
        self.fired = False
        self._closed = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def arm(self, call, seconds: float) -> None:
        """Watch `call` (anything with cancel()) for `seconds` from now."""
        self.fired = False
        self._deadline = time.monotonic() + seconds
        self._call = call

    def disarm(self) -> None:
        """The call made progress in time."""
        self._call = None

    def close(self) -> None:
        """Stop the checking thread."""
        self._closed.set()

    def _run(self) -> None:
        while not self._closed.wait(CHECK_SECONDS):
            call = self._call
            if call is not None and time.monotonic() > self._deadline and call is self._call:
                self._call, self.fired = None, True
                call.cancel()
