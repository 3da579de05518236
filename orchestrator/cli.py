"""The `splitnn` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from splitnn.errors import SplitnnError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _cmd_train(args) -> int:
    from orchestrator.config import load_config
    from orchestrator.run import train

    config = load_config(args.config)
    report = train(config, Path(args.out), args.local)
    print(f"trained in {report['wall_time_s']:.1f}s; outputs in {args.out}")
    for owner, loss in report["final_loss"].items():
        print(f"  final loss at {owner}: {loss:.6f}")
    return 0


def _cmd_demo(args) -> int:
    from orchestrator.demo import run_demo

    return run_demo(EXAMPLES / "seed.toml", Path(args.out))


def build_parser() -> argparse.ArgumentParser:
    """All subcommands."""
    parser = argparse.ArgumentParser(prog="splitnn", description="Split learning over gRPC.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a config across its workers")
    p.add_argument("config", help="a TOML config, e.g. examples/seed.toml")
    p.add_argument("--out", required=True, help="directory for model, metrics and report")
    p.add_argument(
        "--local", action="store_true", help="start the workers here on free loopback ports"
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("demo", help="the notebook's job (examples/seed.toml) on local workers")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.set_defaults(func=_cmd_demo)

    for module in ("orchestrator.cli_data",):
        try:
            __import__(module, fromlist=["register"]).register(sub)
        except ImportError:
            pass
    return parser


def main(argv=None) -> int:
    """Entry point of `splitnn`."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SplitnnError as err:
        print(f"splitnn: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("splitnn: interrupted; workers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
