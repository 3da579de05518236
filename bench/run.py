"""Training throughput of splitnn next to one process and torch.distributed.rpc.

    python -m bench.run [--steps N] [--repeats R] [--large-steps N] [--out bench/results.json]

All figures come from one run on one machine and are compared as ratios.
Every mode uses one torch thread per process. A second table (bench.micro) puts
two owner | bob | owner jobs at batch 1024 against one process, with 1, 2 and 4
micro-batches; --large-steps 0 leaves it out. --network-steps N adds a third
(bench.network): the seed job through a modelled link of 5 ms each way at 1 Gbit/s,
torch rpc and splitnn's owner route and chain through the same link.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from bench import micro, network
from bench.baselines import run_local, run_rpc
from bench.models import mnist_mlp_5way_job, mnist_mlp_job, seed_job
from bench.split_grpc import run_split

MODES = {
    "one process": lambda job, steps: run_local(job, steps=steps, warmup=20),
    "torch rpc": lambda job, steps: run_rpc(job, steps=steps, warmup=20),
    "splitnn (owner drives)": lambda job, steps: run_split(job, steps, warmup=20),
    "splitnn (relay)": lambda job, steps: run_split(job, steps, relay=True, warmup=20),
}


def measure(steps: int, repeats: int) -> list[dict]:
    """Median samples/s of every job in every mode. Repeats go round all modes in
    turn, so a slow spell of a shared machine hits every mode alike."""
    jobs = ((seed_job(), "seed 5-way"), (mnist_mlp_job(), "owner | bob | owner"))
    jobs += ((mnist_mlp_5way_job(), "seed 5-way"),)
    figures: dict[tuple[str, str], list[float]] = {}
    for repeat in range(repeats):
        for job, _ in jobs:
            job_steps = steps * 2 if job.name == "seed" else steps
            for mode, run in MODES.items():
                figure = run(job, job_steps)["samples_per_s"]
                figures.setdefault((job.name, mode), []).append(figure)
                print(
                    f"  run {repeat + 1}/{repeats} {job.name:<15} {mode:<24} {figure:>9.0f}",
                    file=sys.stderr,
                )
    return [
        {
            "job": job.name,
            "layout": layout,
            "mode": mode,
            "samples_per_s": statistics.median(figures[(job.name, mode)]),
            "runs": figures[(job.name, mode)],
        }
        for job, layout in jobs
        for mode in MODES
    ]


def format_table(rows: list[dict]) -> str:
    """A table with ratios against one process and against torch rpc."""
    lines = [
        f"{'job':<15} {'layout':<20} {'mode':<24} {'samples/s':>10} {'x local':>8} {'x rpc':>6}",
    ]
    for row in rows:
        same = [r for r in rows if r["job"] == row["job"]]
        local = next(r["samples_per_s"] for r in same if r["mode"] == "one process")
        rpc = next(r["samples_per_s"] for r in same if r["mode"] == "torch rpc")
        lines.append(
            f"{row['job']:<15} {row['layout']:<20} {row['mode']:<24} "
            f"{row['samples_per_s']:>10.0f} {row['samples_per_s'] / local:>8.2f} "
            f"{row['samples_per_s'] / rpc:>6.2f}"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--large-steps", type=int, default=32, help="steps of the batch-1024 runs (0: none)"
    )
    parser.add_argument(
        "--network-steps", type=int, default=0, help="steps through the modelled link (0: none)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write figures as JSON")
    args = parser.parse_args(argv)
    rows = measure(args.steps, args.repeats)
    print(format_table(rows))
    large = micro.measure(args.large_steps, args.repeats) if args.large_steps else {}
    if large:
        print()
        print(micro.format_table(large))
    linked = []
    if args.network_steps:
        kind = network.link_kind(None)
        routes = ("splitnn, owner route", "splitnn, chain")
        settings = {name: network.SETTINGS[name] for name in routes}
        linked = network.measure([seed_job()], args.network_steps, 5.0, 1000.0, kind, settings)
        print()
        print(network.format_table(linked, 5.0, 1000.0, kind))
    if args.out:
        figures = {
            "network": linked,
            "jobs": rows,
            "batch_1024": [
                {"job": job, "mode": mode, "runs": runs} for (job, mode), runs in large.items()
            ],
        }
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
