"""The `splitnn` command line."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from pathlib import Path

from splitnn import logs
from splitnn.errors import SplitnnError

log = logging.getLogger("splitnn")

# examples/seed.toml, shipped inside the package too (orchestrator/seed.toml links to
# it in the repository; an installed wheel holds a copy).
SEED_CONFIG = Path(__file__).resolve().parent / "seed.toml"


def _cmd_train(args) -> int:
    from splitnn.orchestrator.cli_certs import security_from_args
    from splitnn.orchestrator.local_start import start_early

    resume = None
    if args.resume:
        from splitnn.orchestrator.checkpoint import load_checkpoint

        resume = load_checkpoint(Path(args.resume))
        args.out = args.out or args.resume
        args.config = args.config or resume.config_path
        _say(args, f"resuming {args.resume} at step {resume.cursor.step}")
    if not args.config or not args.out:
        raise SystemExit("splitnn train: give CONFIG and --out DIR, or --resume DIR")
    security = security_from_args(args)
    modules = [f for spec in args.module for f in ("--module", spec)]
    # Local workers start first: they import torch while this process does.
    with start_early(args.config if args.local else None, security, modules) as started:
        if args.module:
            from splitnn.model import modules as operator_modules

            for spec in args.module:
                operator_modules.offer(spec)
        from splitnn.orchestrator.config import load_config
        from splitnn.orchestrator.run import train

        config = load_config(args.config)
        if args.checkpoint_every is not None:
            config.checkpoint_every = args.checkpoint_every
        report = train(
            config,
            Path(args.out),
            args.local,
            relay=args.relay,
            resume=resume,
            security=security,
            started=started,
            sinks=_sinks(args),
            show_progress=False if args.log_format == "json" else None,
        )
    from splitnn.orchestrator.outputs import read_metrics
    from splitnn.orchestrator.results import format_summary

    if args.log_format != "json":  # under json, LogLines gave every record already
        print(format_summary(read_metrics(Path(args.out) / "metrics.jsonl")))
    _say(
        args,
        f"trained {report['steps']} steps in {report['wall_time_s']:.1f}s "
        f"({report['samples_per_s']} samples/s); outputs in {args.out}/",
        run=report["run_id"],
        step=report["steps"],
    )
    return 0


def _sinks(args) -> list:
    """Where `splitnn train` sends metrics records besides metrics.jsonl."""
    from splitnn.orchestrator.metric_sinks import LogLines, TensorBoardLog

    sinks: list = [TensorBoardLog(Path(args.tensorboard))] if args.tensorboard else []
    if args.log_format == "json":
        sinks.append(LogLines())
    return sinks


def _say(args, text: str, **fields) -> None:
    """A result line: printed for people, or logged as JSON under --log-format json."""
    if getattr(args, "log_format", "text") == "json":
        log.info(text, extra=fields)
    else:
        print(text)


def _cmd_report(args) -> int:
    from splitnn.orchestrator.results import report_run

    print(report_run(Path(args.dir), Path(args.dir).name))
    print(f"curves: {Path(args.dir) / 'curves.png'}")
    return 0


def _cmd_evaluate(args) -> int:
    import json

    from splitnn.orchestrator.cli_certs import security_from_args
    from splitnn.orchestrator.config import load_config
    from splitnn.orchestrator.evaluate import evaluate_model
    from splitnn.orchestrator.run import connected_workers

    config = load_config(args.config)
    security = security_from_args(args)
    with connected_workers(config, args.local, security=security) as clients:
        results = evaluate_model(config, clients, Path(args.model), args.dataset)
    if args.log_format != "json":
        print(f"{'owner':<10} {'loss':>10} {'accuracy':>9}")
    for owner, metrics in results.items():
        acc = metrics["test_accuracy"]
        acc_text = f"{acc:.2%}" if acc is not None else "-"
        if args.log_format == "json":
            log.info(
                f"{owner} test loss {metrics['test_loss']:.6g}",
                extra={"fields": {"owner": owner, **metrics}},
            )
        else:
            print(f"{owner:<10} {metrics['test_loss']:>10.5f} {acc_text:>9}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _cmd_demo(args) -> int:
    from splitnn.orchestrator.local_start import start_early

    with start_early(SEED_CONFIG) as started:  # the workers start while we import
        from splitnn.orchestrator.demo import run_demo

        return run_demo(SEED_CONFIG, Path(args.out), started=started)


def build_parser() -> argparse.ArgumentParser:
    """All subcommands."""
    parser = argparse.ArgumentParser(prog="splitnn", description="Split learning over gRPC.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a config across its workers")
    p.add_argument("config", nargs="?", help="a TOML config, e.g. examples/seed.toml")
    p.add_argument("--out", help="directory for model, metrics, report and checkpoints")
    p.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its last checkpoint (CONFIG and --out default to it)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="N",
        help="checkpoint every N steps (default: the config's; always at handovers)",
    )
    p.add_argument(
        "--local", action="store_true", help="start the workers here on free loopback ports"
    )
    p.add_argument(
        "--module",
        action="append",
        default=[],
        metavar="NAME=PACKAGE.MODULE:FACTORY",
        help="an operator's module (as splitnn-worker --module): this process then builds "
        "its start weights and checks its shapes; with --local, the local workers offer it",
    )
    p.add_argument(
        "--relay",
        action="store_true",
        help="carry every activation through this process (default: the owner's worker drives)",
    )
    p.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="also write TensorBoard event files to DIR: loss and accuracy per owner, "
        "bytes per worker, step time (needs the tensorboard package)",
    )
    from splitnn.orchestrator.cli_certs import add_security_arguments

    add_security_arguments(p)
    add_log_arguments(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="a saved model's loss and accuracy on each owner's data")
    p.add_argument("config")
    p.add_argument("--model", required=True, help="DIR/model.safetensors of a run")
    p.add_argument("--dataset", help="dataset name (default: the config's test_dataset)")
    p.add_argument("--local", action="store_true", help="start the workers here")
    p.add_argument("--out", help="also write the results as JSON to this file")
    add_security_arguments(p)
    add_log_arguments(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("report", help="redraw curves.png and the summary of a run directory")
    p.add_argument("dir")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("demo", help="the notebook's job (examples/seed.toml) on local workers")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.set_defaults(func=_cmd_demo)

    for command, (module, hint) in SUBCOMMAND_MODULES.items():
        try:
            importlib.import_module(module).register(sub)
        except ImportError as err:
            _register_unavailable(sub, command, module, hint, err)
    return parser


# Subcommands that live in modules of their own; a module that cannot be imported
# (an optional dependency missing, or a defect) still shows its subcommand, which
# then says why it cannot run instead of vanishing, with what installs it if that is
# known.
SUBCOMMAND_MODULES = {
    "data": ("splitnn.orchestrator.cli_data", " (pip install 'splitnn[data]')"),
    "health": ("splitnn.orchestrator.cli_health", ""),
    "certs": ("splitnn.orchestrator.cli_certs", ""),
}


def add_log_arguments(p: argparse.ArgumentParser) -> None:
    """--log-format and --log-level, as splitnn-worker has them."""
    p.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default="text",
        help="json: every log line and result as one JSON object a line (time, level, "
        "worker, run, step, message), without the progress bar; default text",
    )
    p.add_argument("--log-level", help="log level (default WARNING; INFO under json)")


def _configure_logging(args) -> None:
    log_format = getattr(args, "log_format", "text")
    if log_format == "json":
        logs.configure("json", args.log_level or "INFO")
    elif getattr(args, "log_level", None):
        logging.basicConfig(level=args.log_level.upper(), format="%(message)s")


def _register_unavailable(sub, command: str, module: str, hint: str, err: ImportError) -> None:
    reason = f"{type(err).__name__}: {err}"
    p = sub.add_parser(command, help=f"unavailable: {module} failed to import{hint}")
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def unavailable(args) -> int:
        print(
            f"splitnn {command}: unavailable: {module} failed to import: {reason}{hint}",
            file=sys.stderr,
        )
        return 2

    p.set_defaults(func=unavailable)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    """Entry point of `splitnn`."""
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    # SIGTERM (kill, a container stop) unwinds like Ctrl-C, so that workers started
    # with --local are stopped by their own process ids instead of being orphaned.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return args.func(args)
    except SplitnnError as err:
        if getattr(args, "log_format", "text") == "json":
            log.error(f"splitnn: error: {err}")
        else:
            print(f"splitnn: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("splitnn: interrupted; workers stopped", file=sys.stderr)
        return 130


def console() -> None:
    """The `splitnn` command: main(), then out without Python's teardown. Everything
    is written and every worker started here stopped by then; what is left is
    unloading torch and gRPC, half a second of `splitnn demo`'s eight here. So no
    subcommand may leave work to atexit: logging is shut down and stdio flushed here."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console()
