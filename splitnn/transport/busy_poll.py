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

The spin adapts to the waits it sees: a wait that outlasts the whole spin (a peer
computing a big batch for tens of milliseconds) halves the next spin, down to
none, and a wait shorter than the full spin gives it back. Large-batch jobs on a
machine with fewer cores than processes then stop burning a core their peer
needs, and small ones keep polling.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import time

DEFAULT_SPIN_SECONDS = 0.002


# A spin halved below this share of the full one stops: the loop then sleeps at once.
MIN_SPIN_SHARE = 1 / 16


class SpinningSelector(selectors.DefaultSelector):
    """A selector whose blocking select first polls for up to `spin_seconds`, less
    after waits that outlasted the spin (see the module's docstring)."""

    def __init__(self, spin_seconds: float):
        super().__init__()
        self.spin_seconds = spin_seconds  # the full spin (Quiet sets it to 0 for a while)
        self.budget = spin_seconds  # this wait's spin

    def select(self, timeout: float | None = None):
        if timeout is not None and timeout <= 0:
            return super().select(0)
        budget = min(self.budget, self.spin_seconds)
        spin = budget if timeout is None else min(budget, timeout)
        start = time.perf_counter()
        while not (ready := super().select(0)) and time.perf_counter() - start < spin:
            os.sched_yield()  # a peer process on this core gets it at once
        if not ready:
            rest = None if timeout is None else max(0.0, timeout - (time.perf_counter() - start))
            ready = super().select(rest)
        if ready:  # a wait for work (not a timer's timeout): adapt the next spin
            waited = time.perf_counter() - start
            if waited < self.spin_seconds:
                self.budget = self.spin_seconds
            elif budget > self.spin_seconds * MIN_SPIN_SHARE:
                self.budget = budget / 2
            else:
                self.budget = 0.0
        return ready


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
