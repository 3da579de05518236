"""What runs and identities hold on a worker, checked against the caps in Limits
before a load or a forward adds to it: on the whole worker, per run, and per
identity (the runs one orchestrator created, together)."""

from __future__ import annotations

from collections.abc import Iterable

from splitnn.errors import ResourceExhausted
from splitnn.services.segment import Limits


def _scopes(limits: Limits, run_id: str, owner_runs: set[str]):
    """(what, cap share, which runs count) for the worker, the run and the identity."""
    return (
        ("worker", lambda cap: cap, lambda r: True),
        (f"run {run_id[:64]!r}", lambda cap: limits.share(cap, True), lambda r: r == run_id),
        ("this orchestrator's runs", lambda cap: limits.share(cap, False), owner_runs.__contains__),
    )


def check_load(
    limits: Limits,
    held: Iterable[tuple[str, int]],
    run_id: str,
    owner_runs: set[str],
    parameters: int,
    worker: str,
) -> None:
    """Refuse a segment of `parameters` parameters for `run_id` if it would put the
    worker, the run or its orchestrator's runs over the segment or parameter caps.
    `held` lists (run id, parameters) of every other hosted segment."""
    held = list(held)
    for what, share, counts in _scopes(limits, run_id, owner_runs | {run_id}):
        mine = [p for r, p in held if counts(r)]
        if len(mine) + 1 > share(limits.max_segments):
            raise ResourceExhausted(
                f"worker {worker}: {what} already holds {len(mine)} segments, "
                f"the cap is {share(limits.max_segments)}"
            )
        if sum(mine) + parameters > share(limits.max_parameters):
            raise ResourceExhausted(
                f"worker {worker}: {parameters} more parameters would put {what} over its "
                f"cap of {share(limits.max_parameters)} (it holds {sum(mine)})"
            )


def pending_floor(limits: Limits) -> int:
    """Below this many batches awaiting Backward on the worker, no cap can be reached:
    the common case checks no more than the count."""
    cap = limits.max_pending_batches
    return min(limits.share(cap, True), limits.share(cap, False))


def check_pending(
    limits: Limits, runs: list[str], run_id: str, owner_runs: set[str], worker: str
) -> None:
    """Refuse one more batch awaiting Backward if it would put the worker, the run or
    its orchestrator's runs over the pending cap. `runs` lists the run of each batch
    awaiting Backward now."""
    cap = limits.max_pending_batches
    for what, share, counts in _scopes(limits, run_id, owner_runs | {run_id}):
        mine = sum(1 for r in runs if counts(r))
        if mine + 1 > share(cap):
            raise ResourceExhausted(
                f"worker {worker}: {mine} batches of {what} await Backward, the cap is {share(cap)}"
            )
