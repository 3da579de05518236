"""An asyncio event loop that polls for a while before it sleeps.

A driving worker spends most of a step waiting for a peer's answer, a fraction
of a millisecond each time, and sleeping in epoll only to be woken again adds
to every one of those waits (on the 2-core VM of bench/, polling first made
the MLP steps 8-30% faster). torch.distributed.rpc's TensorPipe avoids the
same cost by polling busily all the time. Here the loop polls without blocking for
at most `spin_seconds` after it runs out of work, then sleeps as usual: a
loop with nothing to do burns one spin, not a core. Between two polls it yields
the core, so that when workers share a machine with fewer cores than processes
(the benchmark's three workers on two cores), the peer it waits for is not kept
off the core by its own caller (MLP 5-way: 1.23x -> 1.35x of torch rpc in an
interleaved A/B of 5 rounds; owner | bob | owner 1.22x -> 1.20x).
"""

from __future__ import annotations

import asyncio
import os
import selectors
import time

DEFAULT_SPIN_SECONDS = 0.002


class SpinningSelector(selectors.DefaultSelector):
    """A selector whose blocking select first polls for up to `spin_seconds`."""

    def __init__(self, spin_seconds: float):
        super().__init__()
        self.spin_seconds = spin_seconds

    def select(self, timeout: float | None = None):
        if timeout is not None and timeout <= 0:
            return super().select(0)
        spin = self.spin_seconds if timeout is None else min(self.spin_seconds, timeout)
        start = time.perf_counter()
        while not (ready := super().select(0)) and time.perf_counter() - start < spin:
            os.sched_yield()  # a peer process on this core gets it at once
        if ready:
            return ready
        if timeout is not None:
            timeout = max(0.0, timeout - (time.perf_counter() - start))
        return super().select(timeout)


class Quiet:
    """Counts the reasons to stop spinning on a loop's SpinningSelector (several at a
    time); spinning resumes when the last one ends. Used on the loop's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        selector = getattr(loop, "_selector", None)
        self.selector = selector if isinstance(selector, SpinningSelector) else None
        self.spin_seconds = self.selector.spin_seconds if self.selector else 0.0
        self.holders = 0

    def __enter__(self) -> Quiet:
        self.holders += 1
        if self.selector is not None:
            self.selector.spin_seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.holders -= 1
        if self.selector is not None and self.holders == 0:
            self.selector.spin_seconds = self.spin_seconds


def new_event_loop(spin_seconds: float = DEFAULT_SPIN_SECONDS) -> asyncio.AbstractEventLoop:
    """An event loop that spins before sleeping; a plain one when `spin_seconds` is 0."""
    if spin_seconds < 0:
        raise ValueError(f"spin_seconds must be at least 0, not {spin_seconds}")
    if spin_seconds == 0:
        return asyncio.new_event_loop()
    return asyncio.SelectorEventLoop(SpinningSelector(spin_seconds))
