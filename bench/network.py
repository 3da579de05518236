"""splitnn through a modelled network link (bench.netproxy): step time of the seed job
and the MLP 5-way job with the owner's route and with chain forwarding.

    python -m bench.network [--steps N] [--delay-ms D] [--mbit R]

Every connection to a worker, from the orchestrator or another worker, passes a
proxy that adds the one-way delay D and caps the rate at R. A step's time is
printed as milliseconds and as round trips of the link (2 D).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from bench.models import mnist_mlp_5way_job, seed_job
from bench.split_grpc import run_split

SETTINGS = {
    "owner route": {"route": "owner"},
    "chain": {"route": "chain"},
    "chain, int8 wire": {"route": "chain", "wire": "int8"},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.network", description=__doc__)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--delay-ms", type=float, default=5.0)
    p.add_argument("--mbit", type=float, default=1000.0)
    p.add_argument("--jobs", default="seed,mnist_mlp_5way", help="comma-separated job names")
    args = p.parse_args(argv)
    link = (args.delay_ms, args.mbit)
    rtt = 2 * args.delay_ms
    print(f"link: {args.delay_ms} ms each way, {args.mbit:g} Mbit/s (round trip {rtt:g} ms)")
    print(f"{'job':<16} {'setting':<18} {'ms/step':>8} {'round trips':>12} {'samples/s':>10}")
    jobs = [job for job in (seed_job(), mnist_mlp_5way_job()) if job.name in args.jobs.split(",")]
    for job in jobs:
        for name, fields in SETTINGS.items():
            # Two lengths: the slope is the step, without start-up and the last flush.
            per_epoch = -(-job.data()[0].shape[0] // job.batch_size)
            short_steps = max(args.steps // 4, per_epoch)  # whole epochs, so the runs differ
            runs = [
                run_split(dataclasses.replace(job, **fields), n, warmup=20, link=link)
                for n in (short_steps, 4 * short_steps)
            ]
            short, long = runs
            step_ms = 1000 * (long["seconds"] - short["seconds"]) / (long["steps"] - short["steps"])
            print(
                f"{job.name:<16} {name:<18} {step_ms:>8.1f} {step_ms / rtt:>12.2f} "
                f"{long['samples_per_s']:>10.0f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
