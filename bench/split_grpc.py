"""splitnn's own throughput on a benchmark job: real worker processes on loopback."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.models import BenchJob
from splitnn.orchestrator.config import parse_config
from splitnn.orchestrator.local_start import LocalStart
from splitnn.orchestrator.run import connected_workers
from splitnn.orchestrator.trainer import Trainer

_LOSS_NAMES = {"sse": "sum_squared_error", "cross_entropy": "cross_entropy"}


def job_config(job: BenchJob, steps: int, directory: Path):
    """The splitnn config (and data files) of a benchmark job, for about `steps` steps."""
    owner = job.data_owner
    hosts = list(dict.fromkeys([*job.hosts, "alice", "bob", "claire"]))
    workers = {h: {"address": "127.0.0.1:1"} for h in hosts}
    dataset = "toy"
    if job.dataset != "toy":
        x, y = job.data()
        path = directory / f"{job.name}.npz"
        np.savez(path, x=x.numpy(), y=y.numpy())
        workers[owner]["data"] = {"train": str(path)}
        dataset = "train"
    x, _ = job.data()
    steps_per_epoch = -(-x.shape[0] // job.batch_size)
    segments = []
    for spec, host in zip(job.segments, job.placement, strict=True):
        layers = []
        for name, *args in spec:
            layer = {"type": name}
            if name == "Linear":
                layer.update(in_features=args[0], out_features=args[1])
            layers.append(layer)
        segments.append({"host": "owner" if host == owner else host, "layers": layers})
    optimizer = {"name": "sgd", "lr": job.lr}
    if job.momentum:
        optimizer["momentum"] = job.momentum
    raw = {
        "name": job.name,
        "seed": job.seed,
        "input_shape": list(x.shape[1:]),
        "workers": workers,
        "training": {
            "owners": [owner],
            "epochs": max(1, steps // steps_per_epoch),
            "batch_size": job.batch_size,
            "shuffle": False,
            "loss": _LOSS_NAMES[job.loss],
            "dataset": dataset,
            "micro_batches": job.micro_batches,
            "route": job.route,
            "wire": job.wire,
        },
        "optimizer": optimizer,
        "segments": segments,
    }
    return parse_config(raw, directory / f"{job.name}.toml")


def run_split(
    job: BenchJob,
    steps: int,
    relay: bool = False,
    warmup: int = 20,
    link: tuple[float, float] | None = None,
    tun=None,
) -> dict:
    """Train the job through three local workers; samples/s over the training itself.
    As the baselines leave out their first `warmup` steps, a warm-up run of at least
    that many steps (whole epochs) goes first on the same workers: it opens the peer
    connections, which the timed run reuses, and warms torch in every process.
    `link` (one-way delay in ms, Mbit/s): every connection to a worker, from the
    orchestrator or another worker, goes through a proxy modelling that link. `tun`
    (a bench.tunlink.TunLink): every worker runs in its host's namespace behind it."""
    with tempfile.TemporaryDirectory() as tmp:
        config = job_config(job, steps, Path(tmp))
        warm = job_config(job, warmup, Path(tmp)) if warmup else None
        return train_config(config, Path(tmp), relay=relay, warm=warm, link=link, tun=tun)


def train_config(
    config, tmp: Path, relay: bool = False, warm=None, link=None, worker_args=(), tun=None
) -> dict:
    """Train a config on local workers (behind link proxies if `link`, in the
    namespaces of a TunLink `tun`; each started with `worker_args` too), after an
    untimed run of `warm` on the same workers; samples/s over the training itself."""
    with contextlib.ExitStack() as stack:
        connect = {"local": True}
        if link is not None or worker_args or tun is not None:
            flags = {host: list(worker_args) for host in config.workers}
            prefix = {}
            if tun is not None:
                for host in config.workers:
                    flags[host] += ["--listen", f"{tun.address(host)}:0"]
                    prefix[host] = tun.prefix(host)
            start = LocalStart(config.workers, worker_args=flags, prefix=prefix)
            started = stack.enter_context(start)
            addresses = started.addresses()
            data = {f"{host} data": a for host, a in started.data_addresses().items()}
            if link is not None:  # the data ports behind proxies too
                proxied = stack.enter_context(proxies({**addresses, **data}, *link))
                addresses = {host: proxied[host] for host in addresses}
                data = {key: proxied[key] for key in data}
            for config_ in (config, warm):
                for host, address in addresses.items() if config_ is not None else ():
                    config_.workers[host].address = address
                    config_.workers[host].data_address = data.get(f"{host} data")
            connect = {"local": False, "security": started.security}
        with connected_workers(config, **connect) as clients:
            if warm is not None:
                Trainer(warm, clients, tmp / "warmup", show_progress=False, relay=relay).run()
            trainer = Trainer(config, clients, tmp / "out", show_progress=False, relay=relay)
            report = trainer.run()
    return {
        "samples_per_s": report["samples_per_s"],
        "steps": report["steps"],
        "seconds": report["train_time_s"],
    }


@contextlib.contextmanager
def proxies(addresses: dict[str, str], delay_ms: float, mbit: float):
    """A bench.netproxy process in front of every address; the proxy address by host."""
    cmd = [sys.executable, "-m", "bench.netproxy", "--delay-ms", str(delay_ms), "--mbit", str(mbit)]
    for address in addresses.values():
        cmd += ["--to", address]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        by_target = {}
        for _ in addresses:
            _, listen, _, target = process.stdout.readline().split()
            by_target[target] = listen
        yield {host: by_target[address] for host, address in addresses.items()}
    finally:
        process.kill()
        process.wait()
