"""Micro-batch pipelining at large batches: one process against splitnn with 1, 2 and 4
micro-batches, owner | bob | owner at batch 1024, for two jobs: the MNIST-shaped MLP
784-256-128-10 (the owner holds most of the arithmetic) and `middle_heavy` (bob
holds half of it; bench.models).

    python -m bench.micro [--steps N] [--repeats R] [--jobs mnist_mlp middle_heavy]

The runs go round all modes in turn; figures are samples/s, compared as ratios
within the run. One torch thread per process.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys

from bench.baselines import run_local
from bench.models import JOBS
from bench.split_grpc import run_split

BATCH = 1024
JOB_NAMES = ("mnist_mlp", "middle_heavy")


def modes_of(name: str, steps: int) -> dict:
    """The runs of one job at batch BATCH, by mode name."""
    job = dataclasses.replace(JOBS[name](n_samples=BATCH * 8), batch_size=BATCH)
    modes = {"one process": lambda: run_local(job, steps=steps, warmup=5)}
    for m in (1, 2, 4):
        micro = dataclasses.replace(job, micro_batches=m)
        modes[f"splitnn, {m} micro-batch{'es' if m > 1 else ''}"] = lambda micro=micro: run_split(
            micro, steps, warmup=8
        )
    return modes


def measure(steps: int, repeats: int, names=JOB_NAMES) -> dict[tuple[str, str], list[float]]:
    """samples/s of every job and mode, per repeat."""
    runs = {(name, mode): run for name in names for mode, run in modes_of(name, steps).items()}
    figures: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    for repeat in range(repeats):
        for (name, mode), run in runs.items():
            figure = run()["samples_per_s"]
            figures[(name, mode)].append(figure)
            print(
                f"  run {repeat + 1}/{repeats} {name:<13} {mode:<26} {figure:>9.0f}",
                file=sys.stderr,
            )
    return figures


def format_table(figures: dict[tuple[str, str], list[float]]) -> str:
    """Median samples/s per job and mode, and the ratio to one process."""
    lines = [f"{'job (batch 1024)':<14} {'mode':<26} {'samples/s':>10} {'x local':>8}"]
    for (name, mode), runs in figures.items():
        local = statistics.median(figures[(name, "one process")])
        median = statistics.median(runs)
        lines.append(f"{name:<14} {mode:<26} {median:>10.0f} {median / local:>8.2f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", nargs="+", default=list(JOB_NAMES), choices=list(JOB_NAMES))
    args = parser.parse_args(argv)
    print(format_table(measure(args.steps, args.repeats, args.jobs)))


if __name__ == "__main__":
    main()
