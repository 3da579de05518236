"""Micro-batch pipelining at large batches: one process against splitnn with 1, 2 and 4
micro-batches, the MNIST-shaped MLP as owner | bob | owner at batch 1024.

    python -m bench.micro [--steps N] [--repeats R]

The runs go round all modes in turn; figures are samples/s, compared as ratios
within the run. One torch thread per process.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys

from bench.baselines import run_local
from bench.models import mnist_mlp_job
from bench.split_grpc import run_split

BATCH = 1024


def measure(steps: int, repeats: int) -> dict[str, list[float]]:
    """samples/s of every mode, per repeat."""
    job = dataclasses.replace(mnist_mlp_job(n_samples=BATCH * 8), batch_size=BATCH)
    modes = {"one process": lambda: run_local(job, steps=steps, warmup=5)}
    for m in (1, 2, 4):
        micro = dataclasses.replace(job, micro_batches=m)
        modes[f"splitnn, {m} micro-batch{'es' if m > 1 else ''}"] = lambda micro=micro: run_split(
            micro, steps, warmup=8
        )
    figures: dict[str, list[float]] = {mode: [] for mode in modes}
    for repeat in range(repeats):
        for mode, run in modes.items():
            figure = run()["samples_per_s"]
            figures[mode].append(figure)
            print(f"  run {repeat + 1}/{repeats} {mode:<26} {figure:>9.0f}", file=sys.stderr)
    return figures


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    figures = measure(args.steps, args.repeats)
    local = statistics.median(figures["one process"])
    print(f"{'mode (batch 1024, owner | bob | owner)':<40} {'samples/s':>10} {'x local':>8}")
    for mode, runs in figures.items():
        median = statistics.median(runs)
        print(f"{mode:<40} {median:>10.0f} {median / local:>8.2f}")


if __name__ == "__main__":
    main()
