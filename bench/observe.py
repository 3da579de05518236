"""What watching a worker costs: the same training with and without `--metrics-port`.

    python -m bench.observe [--epochs N] [--rounds R]

The seed job (examples/seed.toml: the 5-segment chain, three owners in turn, one
full-batch step per epoch) on three local workers, started plain or with
`--metrics-port 0` (every op counted and timed). Rounds alternate the two, so
that the machine's drift falls on both; the figure is the median ms per step.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

from bench.split_grpc import train_config
from splitnn.orchestrator.config import load_config

SEED = Path(__file__).resolve().parent.parent / "examples" / "seed.toml"
SETUPS = {"plain": (), "--metrics-port": ("--metrics-port", "0")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.observe", description=__doc__)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    times: dict[str, list[float]] = {name: [] for name in SETUPS}
    for r in range(args.rounds):
        for name, flags in SETUPS.items():
            config = dataclasses.replace(load_config(SEED), epochs=args.epochs)
            warm = dataclasses.replace(config, epochs=10)
            with tempfile.TemporaryDirectory() as tmp:
                result = train_config(config, Path(tmp), warm=warm, worker_args=flags)
            times[name].append(result["seconds"] * 1e3 / result["steps"])
            print(f"round {r + 1} {name:<15} {times[name][-1]:.3f} ms/step", flush=True)
    base = statistics.median(times["plain"])
    print(f"\n{'workers':<15} {'ms/step':>8} {'x plain':>8}")
    for name, figures in times.items():
        median = statistics.median(figures)
        print(f"{name:<15} {median:>8.3f} {median / base:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
