"""SplitFed against round robin: samples/s of the same training, three owners.

    python -m bench.splitfed [--epochs N] [--delay-ms D]

The seed job (examples/seed.toml: the 5-segment chain, the toy set at every
owner), `epochs` full-batch epochs per owner per round, on three local workers; once
on loopback and once with every connection through a proxy of D ms each way
(bench.netproxy). In round robin one owner trains at a time; in SplitFed all three
at once, each on its own copy of the chain.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from bench.split_grpc import train_config
from splitnn.orchestrator.config import load_config

SEED = Path(__file__).resolve().parent.parent / "examples" / "seed.toml"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.splitfed", description=__doc__)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--delay-ms", type=float, default=5.0)
    args = p.parse_args(argv)
    print(f"{'link':<14} {'schedule':<12} {'samples/s':>10} {'x round robin':>14}")
    for link in (None, (args.delay_ms, 1000.0)):
        base = None
        for schedule in ("round_robin", "splitfed"):
            config = dataclasses.replace(load_config(SEED), schedule=schedule, epochs=args.epochs)
            warm = dataclasses.replace(config, epochs=10)
            with tempfile.TemporaryDirectory() as tmp:
                result = train_config(config, Path(tmp), warm=warm, link=link)
            figure = result["samples_per_s"]
            base = base or figure
            name = "loopback" if link is None else f"{args.delay_ms:g} ms proxy"
            print(f"{name:<14} {schedule:<12} {figure:>10.0f} {figure / base:>13.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
