"""splitnn and torch.distributed.rpc through one modelled network link: step time of the
seed job and the MLP 5-way job, splitnn with the owner's route, chain forwarding,
int8 on the wire and micro-batches, torch rpc beside them, in one run.

    python -m bench.network [--steps N] [--delay-ms D] [--mbit R] [--link tun|proxy]

`--link tun` (the default where root, `ip netns` and /dev/net/tun are there; see
bench.tunlink): every host in a network namespace of its own, the orchestrator in
the machine's, and every packet between any two of them through a userspace switch
that adds the one-way delay D and caps each direction at R. Everything crosses it,
on any port, torch rpc included. `--link proxy` (bench.netproxy): a TCP proxy in
front of every worker; torch rpc cannot go through it (TensorPipe listens on ports
it picks itself after its rendezvous), so its row is left out.

A splitnn step's time is the slope between runs of S and 4S steps (S a quarter of
--steps, at least an epoch), without start-up and the last flush; torch rpc's is
its own timed loop over N steps after its warm-up. Printed as milliseconds, as
round trips of the link (2 D), and as a ratio to torch rpc.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys

from bench import tunlink
from bench.baselines import run_rpc
from bench.models import mnist_mlp_5way_job, seed_job
from bench.split_grpc import run_split

SETTINGS = {
    "splitnn, owner route": {"route": "owner"},
    "splitnn, chain": {"route": "chain"},
    "splitnn, chain, int8": {"route": "chain", "wire": "int8"},
    "splitnn, 2 micro-batches": {"route": "owner", "micro_batches": 2},
}
RPC = "torch rpc"


def split_step_ms(job, steps: int, link: dict) -> tuple[float, float]:
    """(ms a step by the slope of two runs, samples/s of the longer run)."""
    per_epoch = -(-job.data()[0].shape[0] // job.batch_size)
    short_steps = max(steps // 4, per_epoch)  # whole epochs, so the two runs differ
    short, long = (run_split(job, n, warmup=20, **link) for n in (short_steps, 4 * short_steps))
    step_ms = 1000 * (long["seconds"] - short["seconds"]) / (long["steps"] - short["steps"])
    return step_ms, long["samples_per_s"]


def rpc_step_ms(job, steps: int, tun) -> tuple[float, float]:
    result = run_rpc(job, steps, warmup=10, tun=tun, backend_kwargs={"_transports": ["uv"]})
    return 1000 * result["seconds"] / result["steps"], result["samples_per_s"]


def link_kind(asked: str | None) -> str:
    """The link to use: the one asked for, else tun where this machine allows it."""
    why_not = tunlink.available()
    if asked == "tun" and why_not:
        raise SystemExit(f"--link tun: {why_not}")
    return asked or ("proxy" if why_not else "tun")


def measure(jobs, steps: int, delay_ms: float, mbit: float, kind: str, settings=SETTINGS):
    """One row per job and mode, torch rpc first where the link carries it; printed as
    each is measured (to stderr: the table comes after)."""
    rows = []
    for job in jobs:
        with contextlib.ExitStack() as stack:
            if kind == "tun":
                tun = stack.enter_context(tunlink.TunLink(job.hosts, delay_ms, mbit))
                link: dict = {"tun": tun}
                runs = {RPC: lambda job=job, tun=tun: rpc_step_ms(job, steps, tun)}
            else:
                link, runs = {"link": (delay_ms, mbit)}, {}
            for name, fields in settings.items():
                variant = dataclasses.replace(job, **fields)
                runs[name] = lambda v=variant, link=link: split_step_ms(v, steps, link)
            for name, run in runs.items():
                step_ms, samples = run()
                rows.append(
                    {"job": job.name, "mode": name, "ms": step_ms, "samples_per_s": samples}
                )
                print(f"  {job.name:<16} {name:<26} {step_ms:>8.1f} ms", file=sys.stderr)
    return rows


def format_table(rows: list[dict], delay_ms: float, mbit: float, kind: str) -> str:
    """ms a step, round trips of the link, samples/s and the ratio to torch rpc."""
    rtt = 2 * delay_ms
    lines = [
        f"link ({kind}): {delay_ms:g} ms each way, {mbit:g} Mbit/s (round trip {rtt:g} ms)",
        f"{'job':<16} {'mode':<26} {'ms/step':>8} {'round trips':>12} {'samples/s':>10} "
        f"{'x rpc':>6}",
    ]
    for row in rows:
        rpc = [r["ms"] for r in rows if r["job"] == row["job"] and r["mode"] == RPC]
        ratio = f"{rpc[0] / row['ms']:>6.2f}" if rpc else f"{'-':>6}"
        lines.append(
            f"{row['job']:<16} {row['mode']:<26} {row['ms']:>8.1f} {row['ms'] / rtt:>12.2f} "
            f"{row['samples_per_s']:>10.0f} {ratio}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.network", description=__doc__)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--delay-ms", type=float, default=5.0)
    p.add_argument("--mbit", type=float, default=1000.0)
    p.add_argument("--jobs", default="seed,mnist_mlp_5way", help="comma-separated job names")
    p.add_argument("--link", choices=["tun", "proxy"], default=None)
    args = p.parse_args(argv)
    kind = link_kind(args.link)
    jobs = [job for job in (seed_job(), mnist_mlp_5way_job()) if job.name in args.jobs.split(",")]
    rows = measure(jobs, args.steps, args.delay_ms, args.mbit, kind)
    print(format_table(rows, args.delay_ms, args.mbit, kind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
